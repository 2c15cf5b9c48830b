"""Durable execution for Pydantic AI agents on Postgres alone, through the Absurd workflow engine."""

from __future__ import annotations

from ._agent import AbsurdAgent
from ._backend import UnserializableResultError
from ._dsn import redact_dsn, resolve_dsn
from ._durability import TOOL_METADATA_KEY, AbsurdDurability
from ._embedded import EmbeddedPostgres, start_embedded
from ._errors import (
    DatabaseConnectionError,
    EmbeddedPostgresError,
    PydanticAIAbsurdError,
    QueueNameError,
    QueueNotFoundError,
    SchemaInstallError,
    SchemaNotInstalledError,
    SchemaVersionError,
)
from ._events import TOKEN_PREFIX, fail_event_token, resolve_event_token
from ._retry import (
    AGENT_RETRY_STRATEGY,
    NonRetryableError,
    RetryPolicy,
    TaskResultNotSerializableError,
    agent_retry_hooks,
)
from ._schema import (
    ABSURD_SCHEMA_VERSION,
    SchemaInfo,
    check_schema,
    check_schema_sync,
    ensure_queue_exists,
    ensure_queue_exists_sync,
    setup,
    setup_sync,
)
from ._spawn import (
    SpawnedTask,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskResultTimeoutError,
    TaskStatus,
    UnregisteredTaskError,
    fetch_result,
    spawn_task,
    wait_for_result,
)
from ._worker import Worker, WorkerConfig, WorkerHealth, WorkerTargetError, run_worker
from .testing import run_queued

__all__: list[str] = [
    "AbsurdAgent",
    "AbsurdDurability",
    "TOKEN_PREFIX",
    "TOOL_METADATA_KEY",
    "UnserializableResultError",
    "fail_event_token",
    "resolve_event_token",
    # setup, errors, embedded server, testing (infrastructure)
    "ABSURD_SCHEMA_VERSION",
    "DatabaseConnectionError",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "PydanticAIAbsurdError",
    "QueueNameError",
    "QueueNotFoundError",
    "SchemaInfo",
    "SchemaInstallError",
    "SchemaNotInstalledError",
    "SchemaVersionError",
    "check_schema",
    "check_schema_sync",
    "ensure_queue_exists",
    "ensure_queue_exists_sync",
    "redact_dsn",
    "resolve_dsn",
    "run_queued",
    "setup",
    "setup_sync",
    "start_embedded",
    # worker, retries, spawning
    "AGENT_RETRY_STRATEGY",
    "NonRetryableError",
    "RetryPolicy",
    "SpawnedTask",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskResultNotSerializableError",
    "TaskResultTimeoutError",
    "TaskStatus",
    "UnregisteredTaskError",
    "Worker",
    "WorkerConfig",
    "WorkerHealth",
    "WorkerTargetError",
    "agent_retry_hooks",
    "fetch_result",
    "run_worker",
    "spawn_task",
    "wait_for_result",
]
