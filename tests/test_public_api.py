"""The public names of ``aioflow`` are exactly the documented set."""

from __future__ import annotations

import importlib

import aioflow

DOCUMENTED = [
    "AioflowError",
    "App",
    "BatchIncomplete",
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
    ]
    for cls in errors:
        assert issubclass(cls, aioflow.AioflowError), cls
    assert issubclass(aioflow.ResultTimeout, TimeoutError)
    assert issubclass(aioflow.UnknownVersion, aioflow.UnknownFlow)


def test_version() -> None:
    assert isinstance(aioflow.__version__, str) and aioflow.__version__
