"""aioflow: an asyncio-native workflow engine on Redis Streams."""

from .app import App
from .client import Client
from .context import Context, RunStore
from .errors import (
    AioflowError,
    BatchIncomplete,
    ConfigError,
    DefinitionError,
    Forbidden,
    GatewayError,
    GatewayUnavailable,
    InvalidBatch,
    InvalidCallbackUrl,
    InvalidCursor,
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
)
from .model import Dag, Flow
from .policy import RetryPolicy
from .schedule import ScheduleState
from .settings import Settings
from .status import RunState, Status
from .ticks import Schedule
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
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
