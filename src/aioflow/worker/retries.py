"""What a failed attempt of a vertex leads to: a retry, when its policy allows one
(the message waits in the delayed set until due, then runs again), or the failure of
its run, recorded with the error."""

from __future__ import annotations

import logging
import traceback

from aioflow.core import codec
from aioflow.core.errors import InvalidInput, LimitExceeded
from aioflow.definitions.policy import RetryPolicy
from aioflow.store.keys import RunId

log = logging.getLogger("aioflow.worker")


def retry_delay(policy: RetryPolicy, error: BaseException, attempt: int) -> float | None:
    """Seconds until attempt number ``attempt`` that failed with ``error`` runs again, or
    None: the policy gives up, or the error is a LimitExceeded or an InvalidInput (it
    would recur)."""
    if policy.should_retry(error, attempt) and not isinstance(error, LimitExceeded | InvalidInput):
        return policy.delay(attempt)
    return None


def log_retry(
    flow: str, rid: RunId, addr: str, attempt: int, error: BaseException, delay: float
) -> None:
    log.info(
        "run %s vertex %s attempt %d failed (%r); retry in %.2fs",
        rid,
        addr,
        attempt,
        error,
        delay,
        extra={"flow": flow, "run_id": str(rid), "vertex": addr, "attempt": attempt},
    )


def error_record(addr: str, error: BaseException, attempts: int) -> bytes:
    """The error that failed a run, as its ``err`` field holds it."""
    err = {
        "vertex": addr,
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "attempts": attempts,
    }
    return codec.dumps(err)
