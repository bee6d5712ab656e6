"""aioflow: an asyncio-native workflow engine on Redis Streams."""

from .app import App
from .client import Client
from .context import Context, RunStore
from .errors import (
    AioflowError,
    ConfigError,
    DefinitionError,
    Forbidden,
    GatewayError,
    GatewayUnavailable,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidPriority,
    InvalidRunId,
    InvalidTransition,
    LimitExceeded,
    NodeTimeout,
    RedisUnavailable,
    ResultTimeout,
    RunFailed,
    RunNotFound,
    RunStopped,
    Unauthorized,
    UnknownFlow,
)
from .model import Dag, Flow
from .policy import RetryPolicy
from .settings import Settings
from .status import RunState, Status
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AioflowError",
    "App",
    "Client",
    "ConfigError",
    "Context",
    "Dag",
    "DefinitionError",
    "Flow",
    "Forbidden",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidCallbackUrl",
    "InvalidCursor",
    "InvalidPriority",
    "InvalidRunId",
    "InvalidTransition",
    "LimitExceeded",
    "NodeTimeout",
    "RedisUnavailable",
    "ResultTimeout",
    "RetryPolicy",
    "RunFailed",
    "RunNotFound",
    "RunState",
    "RunStopped",
    "RunStore",
    "Settings",
    "Status",
    "Unauthorized",
    "UnknownFlow",
    "Worker",
]
