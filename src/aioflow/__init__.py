"""aioflow: an asyncio-native workflow engine on Redis Streams."""

from .client.client import Client
from .core.errors import (
    AioflowError,
    BatchIncomplete,
    ChildFailed,
    ConfigError,
    DefinitionError,
    Forbidden,
    GatewayError,
    GatewayUnavailable,
    InvalidBatch,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidInput,
    InvalidPriority,
    InvalidRunId,
    InvalidTransition,
    LimitExceeded,
    NodeTimeout,
    RedisFull,
    RedisUnavailable,
    ResultTimeout,
    RunFailed,
    RunNotFound,
    RunStopped,
    Unauthorized,
    UnknownFlow,
    UnknownSchedule,
    UnknownVersion,
    WaitTimeout,
)
from .core.settings import Settings
from .definitions.app import App
from .definitions.model import Dag, Flow
from .definitions.policy import RetryPolicy
from .definitions.status import RunState, Status
from .definitions.ticks import Schedule
from .engine.schedule import ScheduleState
from .worker.context import Context, RunStore
from .worker.worker import Worker

__version__ = "0.1.0"

__all__ = [
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
