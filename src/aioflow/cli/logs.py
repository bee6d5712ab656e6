"""How the ``aioflow`` commands write their logs: text for people, JSON lines for machines.

A record that carries a run's fields (``ctx.log`` records do, and so do the
worker's records about a run) shows them: the text format appends
``[run=<id> vertex=<v> attempt=<n>]``, the JSON format has them as fields.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, Literal, TextIO, get_args

import orjson

from aioflow.core.errors import ConfigError

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure"]

Format = Literal["text", "json"]
FORMATS: tuple[str, ...] = get_args(Format)

# the record attributes that tie a line to a run, in the order they are shown
RUN_FIELDS = ("flow", "run_id", "vertex", "attempt")
_TEXT_FIELDS = (("run_id", "run"), ("vertex", "vertex"), ("attempt", "attempt"))


class TextFormatter(logging.Formatter):
    """``2026-12-07 10:00:00,123 INFO aioflow.node: message [run=... vertex=... attempt=1]``;
    the bracket only when the record carries a run id or a vertex that its message
    does not name already."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        run_id = getattr(record, "run_id", None)
        if run_id is None and getattr(record, "vertex", None) is None:
            return line
        if run_id is not None and str(run_id) in record.message:
            return line  # the worker's own lines name the run and vertex already
        tags = [
            f"{label}={value}"
            for attr, label in _TEXT_FIELDS
            if (value := getattr(record, attr, None)) is not None
        ]
        return f"{line} [{' '.join(tags)}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``; ``flow``, ``run_id``, ``vertex``, ``attempt`` when the record has
    them; ``exc_info`` (the formatted traceback) and ``stack_info`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr in RUN_FIELDS:
            value = getattr(record, attr, None)
            if value is not None:
                doc[attr] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc_info"] = record.exc_text
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class _Handler(logging.Handler):
    """The handler :func:`configure` installs (found again by its type). Without a
    stream of its own it writes to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = self._stream if self._stream is not None else sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure(
    level: str | int = "INFO", fmt: str = "text", *, stream: TextIO | None = None
) -> None:
    """Log records of ``level`` and above to ``stream`` (stderr) in ``fmt``: ``text``
    or ``json``. Called again, it replaces its own handler; handlers others put on
    the root logger stay. Raises :class:`~aioflow.ConfigError` for an unknown level
    or format."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}: use {' or '.join(FORMATS)}")
    if isinstance(level, str):
        name = level.upper()
        if not isinstance(logging.getLevelName(name), int):
            raise ConfigError(
                f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        level = name
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
