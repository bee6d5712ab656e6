"""The :class:`App`: the flows and settings the commands load."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aioflow.core.errors import ConfigError, DefinitionError
from aioflow.core.settings import Settings

from .model import Flow
from .plan import compile_dag


class App:
    """The flows a deployment serves, and its settings.

    ``app = aioflow.App(flows=[kyc, billing], redis_url="redis://...")`` is what
    ``aioflow serve|worker|dev module:app`` load. Settings not given here are
    read from ``AIOFLOW_*`` variables (see :class:`Settings`). Every flow is
    validated now, so a malformed graph fails at import, not at the first run.
    """

    def __init__(
        self,
        flows: Iterable[Flow],
        *,
        redis_url: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        self.flows = list(flows)
        names = [f.name for f in self.flows if isinstance(f, Flow)]
        if len(names) != len(self.flows):
            raise DefinitionError("App(flows=...) takes aioflow.Flow objects")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DefinitionError(f"App has two flows named {sorted(dup)[0]!r}")
        for f in self.flows:
            compile_dag(f)
        base = settings or Settings.from_env()
        try:
            self.settings = base.replace(redis_url=redis_url, **overrides)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def flow(self, name: str) -> Flow:
        for f in self.flows:
            if f.name == name:
                return f
        raise KeyError(name)
