"""Fixtures of the chaos tests: worker subprocesses killed at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Starts ``python -m aioflow worker tests/chaos/apps.py:app`` processes; all are
    killed at teardown and their logs written to stderr (shown when the test fails)."""
    pool = Workers(tmp_path / "workers")
    try:
        yield pool
    finally:
        pool.close()
        sys.stderr.write(pool.logs())
