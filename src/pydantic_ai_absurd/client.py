"""Spawning tasks from web handlers and reading their results, with clear errors.

- `spawn_task()`: `AsyncAbsurd.spawn` with an idempotency key (a double-submitted form or a replayed
  webhook yields one task), pydantic models as parameters, and
  one-line errors for a missing queue, an unregistered task spawned without `queue=`, and a task name
  no worker of the queue runs (when its workers recorded theirs).
- `fetch_result()` / `wait_for_result()`: a task's state and its result validated into a type, or
  `TaskFailedError` / `TaskCancelledError` / `TaskNotFoundError` / `TaskResultTimeoutError`.

Idempotency (Absurd semantics, checked in `tests/unit/client/test_spawn.py`): the first `spawn` with a key creates
the task; every later `spawn` with the same key on the same queue returns that task (its id, its
latest run and attempt) and creates nothing, whatever the parameters, for as long as the task is
stored (until Absurd's cleanup removes it, `cleanup_ttl` 30 days by default, after it finished).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast, overload

import psycopg
import pydantic
from absurd_sdk import AsyncAbsurd, CancellationPolicy, RetryStrategy, TaskResultSnapshot, TaskResultState
from absurd_sdk import TimeoutError as AbsurdTimeoutError

from ._absurd import TERMINAL_TASK_STATES, client_connection, client_conninfo, client_queue_name, is_registered
from ._db import connect_async, create_queue_hint, fit_to_pooler, queue_not_found
from ._text import unstorable_text_at
from ._worker_records import registered_names
from .errors import (
    PydanticAIAbsurdError,
    QueueNotFoundError,
    SchemaNotInstalledError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskResultTimeoutError,
    UnknownTaskError,
    UnregisteredTaskError,
    UnstorableTextError,
)

__all__ = [
    "SpawnedTask",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskResultTimeoutError",
    "TaskStatus",
    "UnknownTaskError",
    "UnregisteredTaskError",
    "fetch_result",
    "spawn_task",
    "wait_for_result",
]

T = TypeVar("T")


@dataclass(frozen=True)
class SpawnedTask:
    """What `spawn_task` returns.

    Attributes:
        task_id: The task's id (the same for every spawn with the same idempotency key).
        run_id: Its current run (a retry or a resume after a crash gets a new one).
        attempt: The run's attempt number (1 for a new task).
        queue: The queue the task was spawned on.
    """

    task_id: str
    run_id: str
    attempt: int
    queue: str


@dataclass(frozen=True)
class TaskStatus(Generic[T]):
    """A task's state, and its result or failure once it is terminal (`fetch_result`).

    Attributes:
        task_id: The task.
        state: `'pending'`, `'running'`, `'sleeping'`, `'completed'`, `'failed'` or `'cancelled'`.
        result: The validated result when `state == 'completed'`, else None.
        failure: Absurd's failure reason JSON when `state == 'failed'`, else None.
    """

    task_id: str
    state: TaskResultState
    result: T | None = None
    failure: Any = None

    @property
    def done(self) -> bool:
        """Whether the task reached a terminal state (completed, failed or cancelled)."""
        return self.state in ("completed", "failed", "cancelled")

    def output(self) -> T:
        """Return the result; raise `TaskFailedError` / `TaskCancelledError`, or `ValueError` while not done."""
        if self.state == "completed":
            return cast("T", self.result)
        if self.state == "failed":
            raise _failed(self.task_id, self.failure)
        if self.state == "cancelled":
            raise TaskCancelledError(f"Task {self.task_id} was cancelled and has no result.", task_id=self.task_id)
        raise ValueError(f"Task {self.task_id} is still {self.state}; use wait_for_result() to wait for it.")


def _failed(task_id: str, failure: Any) -> TaskFailedError:
    if isinstance(failure, dict):
        info = cast("dict[str, Any]", failure)
        name, message = info.get("name", "Error"), info.get("message", "")
        extra = " (not retried: it can never succeed)" if info.get("retryable") is False else ""
        detail = f"{name}: {message}" if message else str(name)
    else:
        detail, extra = str(failure), ""
    return TaskFailedError(f"Task {task_id} failed{extra}: {detail}", task_id=task_id, failure=failure)


def _queue_missing(queue: str) -> QueueNotFoundError:
    return queue_not_found(queue, f"{create_queue_hint(queue)} (or `await setup(dsn, queues=[{queue!r}])`).")


def _map_db_error(err: psycopg.Error, queue: str) -> PydanticAIAbsurdError | None:
    if isinstance(err, psycopg.errors.UndefinedTable):
        return _queue_missing(queue)
    if isinstance(err, psycopg.errors.UndefinedFunction | psycopg.errors.InvalidSchemaName):
        return SchemaNotInstalledError(
            "The database has no Absurd schema: run `pydantic-ai-absurd init` (or `await setup(dsn)`) first."
        )
    return None


def _spawnable_params(
    absurd: AsyncAbsurd, task_name: str, params: Any, headers: dict[str, Any] | None, queue: str | None
) -> Any:
    """`params` as JSON, after refusing what cannot be spawned: an unregistered task without a queue, unstorable text."""
    if queue is None and not is_registered(absurd, task_name):
        raise UnregisteredTaskError(
            f"Task {task_name!r} is not registered on this client: pass queue='...' to spawn a task "
            "that another process's worker runs (e.g. spawn_task(absurd, name, params, queue='agents'))."
        )
    if isinstance(params, pydantic.BaseModel):
        params = params.model_dump(mode="json")
    if where := unstorable_text_at(params, "params") or unstorable_text_at(headers, "headers"):
        raise UnstorableTextError(
            f"Cannot spawn {task_name!r}: Postgres cannot store a NUL character or a lone surrogate ({where}); "
            "remove or escape it first."
        )
    return params


async def spawn_task(
    absurd: AsyncAbsurd,
    task_name: str,
    params: Any = None,
    *,
    queue: str | None = None,
    idempotency_key: str | None = None,
    retry_strategy: RetryStrategy | None = None,
    max_attempts: int | None = None,
    headers: dict[str, Any] | None = None,
    cancellation: CancellationPolicy | None = None,
) -> SpawnedTask:
    """Spawn `task_name` and return at once (for web handlers).

    Args:
        absurd: The client to spawn with.
        task_name: The registered name of the task.
        params: JSON parameters; a pydantic model is dumped in JSON mode.
        queue: Required for a task this process did not register (it runs on another service's
            worker); for a registered task, it must match the registration.
        idempotency_key: Spawns with the same key on the same queue yield one task: later calls
            return the first task instead of creating another (use a form token, a webhook
            delivery id, or `f"{user_id}:{request_id}"`).
        retry_strategy: Backoff between attempts, stored with the task. None (the default) stores
            none: `run_worker` then backs off after an exception with its `RetryPolicy`
            (`AGENT_RETRY_STRATEGY`), while a run whose worker died is retried at once. A stored
            strategy also delays that crash recovery (Absurd applies it to `$ClaimTimeout` too).
        max_attempts: Attempts before the task fails (Absurd's default: 5).
        headers: JSON metadata stored with the task (tracing ids, tenant, ...).
        cancellation: Absurd's cancellation policy (`max_delay`, `max_duration` in seconds).

    Raises:
        UnregisteredTaskError: The task is not registered on `absurd` and `queue` is missing.
        UnknownTaskError: The task is not registered on `absurd`, and the workers of `queue` recorded the
            tasks they run (`run_worker` does at start-up) without this one: it would never run.
        QueueNotFoundError: The queue does not exist in the database.
        SchemaNotInstalledError: The database has no Absurd schema.
    """
    params = _spawnable_params(absurd, task_name, params, headers, queue)
    target = queue or client_queue_name(absurd)
    try:
        await _fit_client_to_pooler(absurd)
        if not is_registered(absurd, task_name):
            await _refuse_unknown(absurd, task_name, target)
        spawned = await absurd.spawn(
            task_name,
            params,
            max_attempts=max_attempts,
            retry_strategy=retry_strategy,
            headers=headers,
            queue=queue,
            cancellation=cancellation,
            idempotency_key=idempotency_key,
        )
    except psycopg.Error as err:
        mapped = _map_db_error(err, target)
        if mapped is not None:
            raise mapped from err
        raise
    return SpawnedTask(str(spawned["task_id"]), str(spawned["run_id"]), int(spawned["attempt"]), target)


async def _known_names(absurd: AsyncAbsurd, queue: str) -> set[str] | None:
    # What cannot be read (a role without access to our schema) is not known: the spawn goes ahead.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn = client_connection(absurd)
        if conn is not None:
            return await registered_names(conn, queue)
        conninfo = client_conninfo(absurd)
        if conninfo is None:
            return None
        async with await connect_async(conninfo, autocommit=True) as own:
            return await registered_names(own, queue)
    return None


async def _refuse_unknown(absurd: AsyncAbsurd, task_name: str, queue: str) -> None:
    known = await _known_names(absurd, queue)
    if known is not None and task_name not in known:
        raise UnknownTaskError(
            f"No worker of queue {queue!r} runs task {task_name!r} (its workers registered "
            f"{', '.join(repr(name) for name in sorted(known))}): check the name, or start a worker that "
            "registers it before spawning."
        )


async def _fit_client_to_pooler(absurd: AsyncAbsurd) -> None:
    """Turn psycopg's prepared statements off on the client's own connection when it is not proven direct.

    A client built from a connection string opens its connection at its first call, with psycopg's
    defaults: statements run 5 times get prepared, which breaks behind PgBouncer in transaction mode. The
    connection exists from the second call on, long before any statement reaches 5 runs.
    """
    conn, conninfo = client_connection(absurd), client_conninfo(absurd)
    if conn is not None and conninfo is not None and conn.prepare_threshold is not None:
        await fit_to_pooler(conn, conninfo)


async def _snapshot(absurd: AsyncAbsurd, task_id: str, queue: str | None) -> TaskResultSnapshot:
    target = queue or client_queue_name(absurd)
    try:
        await _fit_client_to_pooler(absurd)
        snapshot = await absurd.fetch_task_result(task_id, queue_name=queue)
    except psycopg.errors.InvalidTextRepresentation as err:
        raise TaskNotFoundError(f"{task_id!r} is not a task id (a UUID).") from err
    except psycopg.Error as err:
        mapped = _map_db_error(err, target)
        if mapped is not None:
            raise mapped from err
        raise
    if snapshot is None:
        raise TaskNotFoundError(
            f"No task {task_id} in queue {target!r}: check the id and the queue (pass queue=...), "
            "or it was removed by Absurd's cleanup."
        )
    return snapshot


def _status(task_id: str, snapshot: TaskResultSnapshot, result_type: Any) -> TaskStatus[Any]:
    result: Any = snapshot.result
    if snapshot.state == "completed" and result_type is not None:
        result = pydantic.TypeAdapter[Any](result_type).validate_python(result)
    return TaskStatus(task_id=task_id, state=snapshot.state, result=result, failure=snapshot.failure)


@overload
async def fetch_result(absurd: AsyncAbsurd, task_id: str, *, queue: str | None = None) -> TaskStatus[Any]: ...
@overload
async def fetch_result(
    absurd: AsyncAbsurd, task_id: str, *, queue: str | None = None, result_type: type[T]
) -> TaskStatus[T]: ...
async def fetch_result(
    absurd: AsyncAbsurd, task_id: str, *, queue: str | None = None, result_type: Any = None
) -> TaskStatus[Any]:
    """Return the task's current state, with its result validated into `result_type` once completed (no waiting).

    Raises `TaskNotFoundError` for an unknown id and `QueueNotFoundError` for a missing queue; a
    failed or cancelled task is reported in the status (`status.output()` raises for it).
    """
    return _status(task_id, await _snapshot(absurd, task_id, queue), result_type)


@overload
async def wait_for_result(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    queue: str | None = None,
    timeout: float | None = None,
) -> Any: ...
@overload
async def wait_for_result(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    queue: str | None = None,
    timeout: float | None = None,
    result_type: type[T],
) -> T: ...
async def wait_for_result(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    queue: str | None = None,
    timeout: float | None = None,
    result_type: Any = None,
) -> Any:
    """Wait until the task is terminal and return its result (validated into `result_type` if given).

    Polls with Absurd's backoff (50 ms doubling to 1 s). Do not call it from inside a task on the
    same queue (use `ctx.await_task_result` with a child queue there).

    Raises:
        TaskFailedError: The task failed for good (`err.failure` holds Absurd's failure reason).
        TaskCancelledError: The task was cancelled.
        TaskResultTimeoutError: `timeout` seconds passed first; the task keeps running.
        TaskNotFoundError: No such task in the queue.
        pydantic.ValidationError: The result does not fit `result_type`.
    """
    snapshot = await _snapshot(absurd, task_id, queue)
    if snapshot.state not in TERMINAL_TASK_STATES:
        try:
            snapshot = await absurd.await_task_result(task_id, timeout=timeout, queue_name=queue)
        except AbsurdTimeoutError as err:
            raise TaskResultTimeoutError(
                f"Task {task_id} did not finish within {timeout}s; it keeps running (wait again or fetch_result later)."
            ) from err
    return _status(task_id, snapshot, result_type).output()
