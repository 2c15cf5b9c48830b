"""A production worker for the tasks registered on an `absurd_sdk.AsyncAbsurd` client.

`run_worker(absurd)` (or `pydantic-ai-absurd worker MODULE:ATTRIBUTE`) claims tasks with slot refill,
runs hundreds at once on a small pool (a run borrows a connection only for each write), keeps their leases in
bulk, applies a `RetryPolicy`, drains on
SIGTERM and hands unfinished runs back to other workers.
"""

from ._config import (
    APPLICATION_NAME_PREFIX,
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_POOL_SIZE,
    WorkerConfig,
    WorkerHealth,
)
from ._loop import Worker
from ._retry import (
    AGENT_RETRY_STRATEGY,
    NonRetryableError,
    RetryPolicy,
    TaskResultNotSerializableError,
    agent_retry_hooks,
)
from ._run import run_worker

__all__ = [
    "AGENT_RETRY_STRATEGY",
    "APPLICATION_NAME_PREFIX",
    "DEFAULT_CLAIM_TIMEOUT",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_POOL_SIZE",
    "NonRetryableError",
    "RetryPolicy",
    "TaskResultNotSerializableError",
    "Worker",
    "WorkerConfig",
    "WorkerHealth",
    "agent_retry_hooks",
    "run_worker",
]
