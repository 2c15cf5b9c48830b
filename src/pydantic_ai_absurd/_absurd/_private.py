"""The private `absurd_sdk` names this package uses: every one of them is here, checked at start-up.

`absurd_sdk.AsyncAbsurd` runs every task of a worker on one shared connection and offers no public
way to execute a claimed task on another connection. To give each in-flight task its own pooled
connection, the worker builds one short-lived `AsyncAbsurd` per task on a pooled connection (public
constructor) and lets it execute the claimed task with the registrations of the user's client.

Private names used (absurd-sdk 0.5.1), all pinned by `tests/unit/compat/test_worker_sdk_private.py` and checked by
`check_private_names()` when a worker starts and when a durable agent is first bound:

- `AsyncAbsurd._registry`: dict of task name -> registration, shared (not copied) with each
  per-task client so registrations made later are seen too;
- `AsyncAbsurd._execute_task(task, claim_timeout)`: runs one claimed task (context creation with
  checkpoint preload, contextvar, `wrap_task_execution` hook, `complete_run` / `fail_run`);
- `AsyncAbsurd._hooks`: the user's hooks, so that per-task clients keep `wrap_task_execution`, and a durable child
  task's spawn runs `before_spawn` (`_spawning.py`);
- `AsyncAbsurd._prepare_spawn(task_name, ...)`: the queue and options `spawn` sends after its `before_spawn` hook (the
  registration's and the client's defaults applied), for the durable child spawn we send in our own SQL
  (`_spawning.py`);
- `AsyncAbsurd._queue_name`: the client's queue (no public accessor exists);
- `AsyncAbsurd._conn_string` / `AsyncAbsurd._conn`: where the client connects, to open a pool on
  the same database when no DSN is given;
- `AsyncTaskContext._claim_timeout`: the claim timeout a run was claimed with; the engine's lease keeper
  heartbeats at a third of it (pinned by `tests/unit/compat/test_compat.py`);
- `AsyncTaskContext._task`: the claimed task (run id, attempt) a context runs, for the attributes of the
  OpenTelemetry spans (`pydantic_ai_absurd.telemetry`);
- `AsyncTaskContext._queue_name` and `_task` (its `task_name`): the queue and task name of the running task, which
  the inbox records with each request (`task_identity`);
- `AsyncTaskContext._step_name_counter`: the encounter counter of step names; a step that ended without a
  checkpoint gives its name back (`release_step_name`), so a retried model request is stored under the name a
  replay looks for (pinned by `tests/unit/engine/test_durable_hooks.py`);
- `AsyncTaskContext._conn`, `_queue_name` and `_task` (its `run_id`): a wait longer than the suspend threshold
  puts the run to sleep with `absurd.schedule_run` (`suspend_run_until`), and a replay divergence lowers the
  task's `max_attempts` (`give_up_retries`), both on the task's own connection;
- `AsyncTaskContext._get_checkpoint_name` and `_checkpoint_cache`: `begin_step` without the extra query
  (pinned by `tests/unit/compat/test_compat.py`). The SDK preloads every checkpoint of the task when it creates the
  context, and updates the cache on each write of this execution; a name missing from it has no
  checkpoint, yet `begin_step` asks Postgres again, doubling the statements of every new step. Any other
  writer would be an older run of the task, and Absurd refuses its writes once a newer run exists.
  `remember_checkpoint` writes the cache too: a tool step whose checkpoint `durable_transaction()` committed
  in the tool's own transaction (`_transactional.py`) is entered there as `complete_step` would enter it
  (pinned by `tests/unit/transactions/test_transactions.py`).
- `AsyncTaskContext._get_checkpoint_name`, `_lookup_checkpoint`, `_persist_checkpoint` and `_schedule_run_after`,
  overridden by `OfflineTaskContext` (`_offline.py`): every checkpoint read, write and reschedule of the SDK's own
  context methods goes through them, so deploy verification's context reaches no database (checked by
  `check_offline_context_names()`, pinned by `tests/unit/verify/test_verify_sandbox.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from typing import Any, NoReturn, TypeVar, cast

import psycopg
from absurd_sdk import (
    AbsurdHooks,
    AsyncAbsurd,
    AsyncTaskContext,
    CancelledTask,
    ClaimedTask,
    FailedTask,
    SpawnOptions,
    StepHandle,
    SuspendTask,
)
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from ..errors import IncompatibleSdkError
from ._borrowed import unsupported_connection_uses
from ._sql import end_state_of, exhaust_attempts, schedule_run_at


def _registry(absurd: AsyncAbsurd) -> dict[str, dict[str, Any]]:
    return absurd._registry  # pyright: ignore[reportPrivateUsage]


async def execute_claimed_task(
    absurd: AsyncAbsurd,
    conn: AsyncConnection[Any],
    task: ClaimedTask,
    claim_timeout: int,
    hooks: AbsurdHooks,
    *,
    queue_name: str | None = None,
) -> None:
    """Execute `task` (already claimed from `queue_name`) with `absurd`'s handlers, on `conn`.

    The per-task client is bound to `queue_name` (default: `absurd`'s queue), the queue the task was
    claimed from: its context then writes checkpoints, heartbeats and the result to that queue. A
    handler registered on `absurd` without an explicit queue follows the worker's queue; one registered
    for a third queue is left to Absurd, which fails the run as misconfigured.
    Uses `AsyncAbsurd._registry` and `AsyncAbsurd._execute_task` (private, absurd-sdk 0.5.1).
    """
    own_queue = client_queue_name(absurd)
    queue = queue_name or own_queue
    client = AsyncAbsurd(conn, queue_name=queue, hooks=hooks)
    registry = _registry(absurd)
    registration = registry.get(task["task_name"])
    if queue != own_queue and registration is not None and registration.get("queue") == own_queue:
        registry = {task["task_name"]: {**registration, "queue": queue}}
    client._registry = registry  # pyright: ignore[reportPrivateUsage]
    await client._execute_task(task, claim_timeout)  # pyright: ignore[reportPrivateUsage]


def registered_queue(absurd: AsyncAbsurd, task_name: str) -> str | None:
    """The queue `task_name` was registered for on `absurd` (reads `AsyncAbsurd._registry`), if registered."""
    registration = _registry(absurd).get(task_name)
    return None if registration is None else cast("str | None", registration.get("queue"))


def is_registered(absurd: AsyncAbsurd, task_name: str) -> bool:
    """Whether `absurd` has a handler for `task_name` (reads `AsyncAbsurd._registry`)."""
    return task_name in _registry(absurd)


def registered_task_names(absurd: AsyncAbsurd) -> list[str]:
    """Names of the tasks registered on `absurd` (reads `AsyncAbsurd._registry`)."""
    return sorted(_registry(absurd))


def client_hooks(absurd: AsyncAbsurd) -> AbsurdHooks:
    """Return the hooks `absurd` was built with (reads `AsyncAbsurd._hooks`)."""
    return absurd._hooks  # pyright: ignore[reportPrivateUsage]


def prepared_spawn_options(
    absurd: AsyncAbsurd, task_name: str, options: SpawnOptions, *, queue: str, idempotency_key: str
) -> dict[str, Any]:
    """The options `absurd.spawn` sends for `options` (after its hook): the registration's and client's defaults applied."""
    _, prepared = absurd._prepare_spawn(  # pyright: ignore[reportPrivateUsage]
        task_name,
        max_attempts=options.get("max_attempts"),
        retry_strategy=options.get("retry_strategy"),
        headers=options.get("headers"),
        queue=queue,
        cancellation=options.get("cancellation"),
        idempotency_key=idempotency_key,
    )
    return dict(prepared)


def client_queue_name(absurd: AsyncAbsurd) -> str:
    """Return the queue `absurd` was built for (reads `AsyncAbsurd._queue_name`)."""
    return absurd._queue_name  # pyright: ignore[reportPrivateUsage]


def client_connection(absurd: AsyncAbsurd) -> AsyncConnection[Any] | None:
    """The client's open autocommit connection (reads `AsyncAbsurd._conn`), if it has one to share."""
    conn: AsyncConnection[Any] | None = absurd._conn  # pyright: ignore[reportPrivateUsage]
    return conn if conn is not None and not conn.closed and conn.autocommit else None


def client_conninfo(absurd: AsyncAbsurd) -> str | None:
    """Return a connection string for the database of `absurd`, or None if it has neither URL nor connection.

    Reads `AsyncAbsurd._conn_string`, else `AsyncAbsurd._conn` (its `info.dsn` plus `info.password`,
    which psycopg leaves out of `dsn`).
    """
    conn_string: str | None = absurd._conn_string  # pyright: ignore[reportPrivateUsage]
    if conn_string:
        return conn_string
    conn: AsyncConnection[Any] | None = absurd._conn  # pyright: ignore[reportPrivateUsage]
    if conn is None:
        return None
    password = conn.info.password
    if password:
        return make_conninfo(conn.info.dsn, password=password)
    return conn.info.dsn


async def execute_task(absurd: AsyncAbsurd, task: ClaimedTask, claim_timeout: int) -> None:
    """Execute `task` (already claimed) with `absurd`'s handlers and connection, as `work_batch` does."""
    await absurd._execute_task(task, claim_timeout)  # pyright: ignore[reportPrivateUsage]


def task_identity(task_ctx: AsyncTaskContext) -> tuple[str, str]:
    """`(queue_name, task_name)` of the running task (`AsyncTaskContext._queue_name` and `_task["task_name"]`)."""
    queue_name: str = task_ctx._queue_name  # pyright: ignore[reportPrivateUsage]
    task = task_ctx._task  # pyright: ignore[reportPrivateUsage]
    return queue_name, str(task["task_name"])


def claim_timeout_of(task_ctx: AsyncTaskContext) -> float:
    """The claim timeout, in seconds, the worker claimed this task run with (`AsyncTaskContext._claim_timeout`)."""
    return float(task_ctx._claim_timeout)  # pyright: ignore[reportPrivateUsage]


async def begin_step(task_ctx: AsyncTaskContext, name: str) -> StepHandle:
    """`task_ctx.begin_step(name)`, answered from the preloaded checkpoints instead of one more query."""
    checkpoint_name = task_ctx._get_checkpoint_name(name)  # pyright: ignore[reportPrivateUsage]
    cache = task_ctx._checkpoint_cache  # pyright: ignore[reportPrivateUsage]
    if checkpoint_name in cache:
        return StepHandle(name=name, checkpoint_name=checkpoint_name, done=True, state=cache[checkpoint_name])
    return StepHandle(name=name, checkpoint_name=checkpoint_name, done=False)


_CONTEXT_ATTRIBUTES = ("_claim_timeout", "_checkpoint_cache", "_task", "_conn", "_queue_name", "_step_name_counter")


_CONTEXT_METHODS = ("_get_checkpoint_name",)


_CLIENT_ATTRIBUTES = ("_registry", "_hooks", "_queue_name", "_conn_string", "_conn")


_CLIENT_METHODS = ("_execute_task", "_prepare_spawn")


@functools.cache
def missing_private_names() -> tuple[str, ...]:
    """The private `absurd_sdk` names this package relies on that the installed SDK lacks."""
    missing = [
        f"AsyncTaskContext.{name}" for name in _CONTEXT_ATTRIBUTES if name not in AsyncTaskContext.__annotations__
    ]
    missing += [
        f"AsyncTaskContext.{name}" for name in _CONTEXT_METHODS if not callable(getattr(AsyncTaskContext, name, None))
    ]
    probe = AsyncAbsurd("postgresql://", queue_name="probe")  # connects lazily: nothing is opened here
    missing += [f"AsyncAbsurd.{name}" for name in _CLIENT_ATTRIBUTES if not hasattr(probe, name)]
    missing += [f"AsyncAbsurd.{name}" for name in _CLIENT_METHODS if not callable(getattr(AsyncAbsurd, name, None))]
    missing += unsupported_connection_uses()
    return tuple(missing)


def check_private_names() -> None:
    """Refuse to run on an `absurd_sdk` that lacks a private name this package relies on (one-line error)."""
    _refuse_without(missing_private_names())


def _refuse_without(missing: tuple[str, ...], purpose: str = "") -> None:
    """Raise the one-line `IncompatibleSdkError` naming the `missing` SDK names (needed `purpose`), if any."""
    if missing:
        raise IncompatibleSdkError(
            f"The installed absurd-sdk {_sdk_version()} lacks {', '.join(missing)}, which pydantic-ai-absurd "
            f"relies on{purpose}; install a supported version (see the Compatibility page of the docs)."
        )


def _sdk_version() -> str:
    try:
        return metadata.version("absurd-sdk")
    except metadata.PackageNotFoundError:  # pragma: no cover - an uninstalled source tree
        return "(unknown version)"


def claimed_task_of(task_ctx: AsyncTaskContext) -> ClaimedTask:
    """The claimed task a context runs (`AsyncTaskContext._task`: run id, attempt, task name, headers)."""
    return task_ctx._task  # pyright: ignore[reportPrivateUsage]


def preloaded_checkpoint_names(task_ctx: AsyncTaskContext) -> frozenset[str]:
    """The checkpoint names in the context's cache now (`AsyncTaskContext._checkpoint_cache`)."""
    return frozenset(task_ctx._checkpoint_cache)  # pyright: ignore[reportPrivateUsage]


def step_encounters(task_ctx: AsyncTaskContext) -> dict[str, int]:
    """How often each step name was begun in this execution (`AsyncTaskContext._step_name_counter`)."""
    return task_ctx._step_name_counter  # pyright: ignore[reportPrivateUsage]


def release_step_name(task_ctx: AsyncTaskContext, handle: StepHandle) -> None:
    """Give the checkpoint name of a step that ended without a checkpoint back to the SDK's counter.

    The next step of the same name then takes it again, as a replay will: a model request retried after a failure
    (`RetryOnModelErrors`) is stored under the name the failed one had, and a replay finds it there. Only the latest
    name handed out can be given back.
    """
    counter = task_ctx._step_name_counter  # pyright: ignore[reportPrivateUsage]
    count = counter.get(handle.name, 0)
    taken = handle.name if count == 1 else f"{handle.name}#{count}"
    if count and taken == handle.checkpoint_name:
        counter[handle.name] = count - 1


def remember_checkpoint(task_ctx: AsyncTaskContext, checkpoint_name: str, state: Any) -> None:
    """Enter a checkpoint committed outside the SDK (`durable_transaction`) in `AsyncTaskContext._checkpoint_cache`."""
    task_ctx._checkpoint_cache[checkpoint_name] = state  # pyright: ignore[reportPrivateUsage]


def checkpoint_state(task_ctx: AsyncTaskContext, name: str) -> Any:
    """The cached state of checkpoint `name` (`AsyncTaskContext._checkpoint_cache`), or None."""
    return task_ctx._checkpoint_cache.get(name)  # pyright: ignore[reportPrivateUsage]


_OFFLINE_CONTEXT_ATTRIBUTES = (
    "_conn",
    "_queue_name",
    "_task",
    "_checkpoint_cache",
    "_claim_timeout",
    "_step_name_counter",
)

_OFFLINE_CONTEXT_METHODS = ("_get_checkpoint_name", "_lookup_checkpoint", "_persist_checkpoint", "_schedule_run_after")
"""Called by `OfflineTaskContext` (`_get_checkpoint_name`) or overridden by it (all four, `_offline.py`)."""


@functools.cache
def missing_offline_context_names() -> tuple[str, ...]:
    """The private `absurd_sdk` names an offline task context needs that the installed SDK lacks."""
    import absurd_sdk

    missing = [
        f"AsyncTaskContext.{name}"
        for name in _OFFLINE_CONTEXT_ATTRIBUTES
        if name not in AsyncTaskContext.__annotations__
    ]
    missing += [
        f"AsyncTaskContext.{name}"
        for name in _OFFLINE_CONTEXT_METHODS
        if not callable(getattr(AsyncTaskContext, name, None))
    ]
    if not hasattr(absurd_sdk, "_current_task_context"):
        missing.append("absurd_sdk._current_task_context")
    if "_registry" not in AsyncAbsurd("postgresql://", queue_name="probe").__dict__:
        missing.append("AsyncAbsurd._registry")
    return tuple(missing)


def check_offline_context_names() -> None:
    """Refuse to verify on an `absurd_sdk` that lacks a name the offline context needs (one-line error)."""
    _refuse_without(missing_offline_context_names(), " (to verify recorded tasks)")


def registered_handlers(absurd: AsyncAbsurd) -> dict[str, Callable[..., Any]]:
    """Task name -> handler of every task registered on `absurd` (`AsyncAbsurd._registry[name]["handler"]`)."""
    return {name: registration["handler"] for name, registration in _registry(absurd).items()}


_ContextT = TypeVar("_ContextT", bound=AsyncTaskContext)


def offline_task_context(
    cls: type[_ContextT],
    *,
    task: ClaimedTask,
    queue_name: str,
    checkpoints: dict[str, Any],
    connection: Any,
    claim_timeout: int = 60,
) -> _ContextT:
    """An instance of `cls` (an `AsyncTaskContext` subclass) for `task`, preloaded with `checkpoints`.

    Set up as `absurd_sdk._create_async_task_context` does, with `connection` in place of a database
    connection (verification passes an object that refuses every use).
    """
    ctx = object.__new__(cls)
    ctx.task_id = task["task_id"]
    ctx._conn = connection  # pyright: ignore[reportPrivateUsage]
    ctx._queue_name = queue_name  # pyright: ignore[reportPrivateUsage]
    ctx._task = task  # pyright: ignore[reportPrivateUsage]
    ctx._checkpoint_cache = checkpoints  # pyright: ignore[reportPrivateUsage]
    ctx._claim_timeout = claim_timeout  # pyright: ignore[reportPrivateUsage]
    ctx._step_name_counter = {}  # pyright: ignore[reportPrivateUsage]
    return ctx


@contextmanager
def current_context(ctx: AsyncTaskContext) -> Generator[None]:
    """Install `ctx` as `absurd_sdk.get_current_context()` for the code inside (`absurd_sdk._current_task_context`)."""
    import absurd_sdk

    variable = absurd_sdk._current_task_context  # pyright: ignore[reportPrivateUsage]
    token = variable.set(ctx)
    try:
        yield
    finally:
        variable.reset(token)


def execution_attempt(task_ctx: AsyncTaskContext) -> int:
    """The attempt of the run `task_ctx` executes, from 1 (`AsyncTaskContext._task["attempt"]`)."""
    return int(claimed_task_of(task_ctx)["attempt"])


async def _write(
    task_ctx: AsyncTaskContext, write: Callable[[AsyncConnection[Any], str, str], Awaitable[None]]
) -> None:
    """Run `write(conn, queue, run_id)` on the task's connection, raising Absurd's exception if the run has ended."""
    try:
        await write(task_connection(task_ctx), task_ctx._queue_name, str(claimed_task_of(task_ctx)["run_id"]))  # pyright: ignore[reportPrivateUsage]
    except psycopg.Error as error:
        ended = end_state_of(error)
        if ended == "cancelled":
            raise CancelledTask() from error
        if ended == "failed":
            raise FailedTask() from error
        raise


async def suspend_run_until(task_ctx: AsyncTaskContext, wake_at: datetime) -> NoReturn:
    """Put the running run to sleep until `wake_at` and raise `SuspendTask`: another execution resumes it then."""
    await _write(task_ctx, lambda conn, queue, run_id: schedule_run_at(conn, queue, run_id, wake_at))
    raise SuspendTask()


async def give_up_retries(task_ctx: AsyncTaskContext) -> None:
    """Make the running run's failure final: its task gets no further attempt, whichever worker fails it."""
    await _write(task_ctx, exhaust_attempts)


def task_connection(task_ctx: AsyncTaskContext) -> AsyncConnection[Any]:
    """The connection the running task writes its checkpoints on (`AsyncTaskContext._conn`).

    The event log (`pydantic_ai_absurd.events`) appends a step's events on it, so they reach Postgres in
    order with that step's own writes, without a pool of its own.
    """
    return task_ctx._conn  # pyright: ignore[reportPrivateUsage]
