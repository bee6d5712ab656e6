"""The public names of ``aioflow`` are exactly the documented set."""

from __future__ import annotations

import importlib

import aioflow

DOCUMENTED = [
    "AioflowError",
    "App",
    "BatchIncomplete",
    "ChildFailed",
    "Client",
    "ConfigError",
    "Context",
    "Dag",
    "DefinitionError",
    "Flow",
    "Forbidden",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidBatch",
    "InvalidCallbackUrl",
    "InvalidCursor",
    "InvalidInput",
    "InvalidPriority",
    "InvalidRunId",
    "InvalidTransition",
    "LimitExceeded",
    "NodeTimeout",
    "RedisFull",
    "RedisUnavailable",
    "ResultTimeout",
    "RetryPolicy",
    "RunFailed",
    "RunNotFound",
    "RunState",
    "RunStopped",
    "RunStore",
    "Schedule",
    "ScheduleState",
    "Settings",
    "Status",
    "Unauthorized",
    "UnknownFlow",
    "UnknownVersion",
    "UnknownSchedule",
    "WaitTimeout",
    "Worker",
]


def test_all_is_the_documented_set() -> None:
    assert sorted(aioflow.__all__) == sorted(DOCUMENTED)
    assert len(aioflow.__all__) == len(set(aioflow.__all__)), "duplicates in __all__"


def test_every_name_is_importable() -> None:
    module = importlib.import_module("aioflow")
    for name in aioflow.__all__:
        assert getattr(module, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from aioflow import *", namespace)
    assert set(DOCUMENTED) <= set(namespace)


def test_exceptions_share_one_root() -> None:
    errors = [
        aioflow.ConfigError,
        aioflow.DefinitionError,
        aioflow.InvalidCallbackUrl,
        aioflow.InvalidInput,
        aioflow.InvalidRunId,
        aioflow.InvalidTransition,
        aioflow.NodeTimeout,
        aioflow.RedisFull,
        aioflow.RedisUnavailable,
        aioflow.ResultTimeout,
        aioflow.RunFailed,
        aioflow.RunNotFound,
        aioflow.RunStopped,
        aioflow.UnknownFlow,
        aioflow.UnknownVersion,
        aioflow.UnknownSchedule,
        aioflow.WaitTimeout,
        aioflow.ChildFailed,
    ]
    for cls in errors:
        assert issubclass(cls, aioflow.AioflowError), cls
    assert issubclass(aioflow.ResultTimeout, TimeoutError)
    assert issubclass(aioflow.UnknownVersion, aioflow.UnknownFlow)
    assert issubclass(aioflow.ChildFailed, aioflow.RunFailed)


def test_version() -> None:
    assert isinstance(aioflow.__version__, str) and aioflow.__version__


# Paths the README documents, each with where the object lives now. A module that
# moved keeps a thin re-export at its documented path (see the README's Architecture).
DOCUMENTED_PATHS = {
    "aioflow.Worker": "aioflow.worker.worker.Worker",
    "aioflow.worker.Worker": "aioflow.worker.worker.Worker",
    "aioflow.app.App": "aioflow.definitions.app.App",
    "aioflow.app.connect": "aioflow.store.connect.connect",
    "aioflow.gateway.create_app": "aioflow.gateway.routes.create_app",
    "aioflow.security.sign": "aioflow.core.security.sign",
    "aioflow.security.verify": "aioflow.core.security.verify",
    "aioflow.security.parse_secrets": "aioflow.core.security.parse_secrets",
    "aioflow.redis_cluster.LocalCluster": "aioflow.store.redis_cluster.LocalCluster",
    "aioflow.versions.version_of": "aioflow.definitions.versions.version_of",
    "aioflow.status.VertexStatus": "aioflow.definitions.status.VertexStatus",
    "aioflow.logs.configure": "aioflow.cli.logs.configure",
    "aioflow.cli.main": "aioflow.cli.command.main",
    "aioflow.testing.run_flow": "aioflow.testing.run_flow",
    "aioflow.testing.Kit": "aioflow.testing.Kit",
}


def _resolve(path: str) -> object:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def test_documented_paths_keep_working() -> None:
    for documented, home in DOCUMENTED_PATHS.items():
        assert _resolve(documented) is _resolve(home), documented


def test_the_console_script_entry_point_is_callable() -> None:
    # [project.scripts] aioflow = "aioflow.cli:main"
    assert callable(importlib.import_module("aioflow.cli").main)
