"""Everything that reaches into Absurd: the private `absurd_sdk` names, and raw SQL on Absurd's functions and tables.

`absurd_sdk.AsyncAbsurd` runs every task of a worker on one shared connection and offers no public
way to execute a claimed task on another connection. To give each in-flight task its own pooled
connection, the worker builds one short-lived `AsyncAbsurd` per task on a pooled connection (public
constructor) and lets it execute the claimed task with the registrations of the user's client.

Private names used (absurd-sdk 0.5.1), all pinned by `tests/test_worker_sdk_private.py` and checked by
`check_private_names()` when a worker starts and when a durable agent is first bound:

- `AsyncAbsurd._registry`: dict of task name -> registration, shared (not copied) with each
  per-task client so registrations made later are seen too;
- `AsyncAbsurd._execute_task(task, claim_timeout)`: runs one claimed task (context creation with
  checkpoint preload, contextvar, `wrap_task_execution` hook, `complete_run` / `fail_run`);
- `AsyncAbsurd._hooks`: the user's hooks, so that per-task clients keep `wrap_task_execution`;
- `AsyncAbsurd._queue_name`: the client's queue (no public accessor exists);
- `AsyncAbsurd._conn_string` / `AsyncAbsurd._conn`: where the client connects, to open a pool on
  the same database when no DSN is given;
- `AsyncTaskContext._claim_timeout`: the claim timeout a run was claimed with; the engine's lease keeper
  heartbeats at a third of it (pinned by `tests/test_compat.py`);
- `AsyncTaskContext._task`: the claimed task (run id, attempt) a context runs, for the attributes of the
  OpenTelemetry spans (`pydantic_ai_absurd.telemetry`);
- `AsyncTaskContext._queue_name` and `_task` (its `task_name`): the queue and task name of the running task, which
  the inbox records with each request (`task_identity`);
- `AsyncTaskContext._get_checkpoint_name` and `_checkpoint_cache`: `begin_step` without the extra query
  (pinned by `tests/test_compat.py`). The SDK preloads every checkpoint of the task when it creates the
  context, and updates the cache on each write of this execution; a name missing from it has no
  checkpoint, yet `begin_step` asks Postgres again, doubling the statements of every new step. Any other
  writer would be an older run of the task, and Absurd refuses its writes once a newer run exists.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Generator
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Literal, TypeVar, cast

import psycopg
from absurd_sdk import AbsurdHooks, AsyncAbsurd, AsyncTaskContext, ClaimedTask, RetryStrategy, StepHandle
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo

from .errors import IncompatibleSdkError

__all__ = [
    "SQLSTATE_CANCELLED",
    "SQLSTATE_FAILED",
    "check_private_names",
    "claim_timeout_of",
    "client_conninfo",
    "client_hooks",
    "client_queue_name",
    "execute_claimed_task",
    "end_state_of",
    "execute_task",
    "TERMINAL_TASK_STATES",
    "emit_event_sql",
    "emitted_events",
    "existing_queues",
    "extend_claim",
    "task_identity",
    "task_states",
    "fail_run",
    "fail_task_permanently",
    "begin_step",
    "checkpoint_state",
    "claimed_task_of",
    "database_now",
    "list_queue_names",
    "list_tasks",
    "preloaded_checkpoint_names",
    "read_checkpoints",
    "read_runs",
    "read_task",
    "step_encounters",
    "check_offline_context_names",
    "current_context",
    "is_registered",
    "missing_offline_context_names",
    "offline_task_context",
    "registered_handlers",
    "spawn_with_checkpoints",
    "task_ids_in_states",
    "task_options",
    "missing_private_names",
    "registered_queue",
    "registered_task_names",
    "schedule_run_now",
    "backend_pid",
    "hold_worker_lock",
    "worker_lock_held",
    "hand_back_orphaned_runs",
]


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


def client_queue_name(absurd: AsyncAbsurd) -> str:
    """Return the queue `absurd` was built for (reads `AsyncAbsurd._queue_name`)."""
    return absurd._queue_name  # pyright: ignore[reportPrivateUsage]


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


_CONTEXT_ATTRIBUTES = ("_claim_timeout", "_checkpoint_cache", "_task", "_conn")
_CONTEXT_METHODS = ("_get_checkpoint_name",)
_CLIENT_ATTRIBUTES = ("_registry", "_hooks", "_queue_name", "_conn_string", "_conn")
_CLIENT_METHODS = ("_execute_task",)


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
    return tuple(missing)


def check_private_names() -> None:
    """Refuse to run on an `absurd_sdk` that lacks a private name this package relies on (one-line error)."""
    missing = missing_private_names()
    if missing:
        raise IncompatibleSdkError(
            f"The installed absurd-sdk {_sdk_version()} lacks {', '.join(missing)}, which pydantic-ai-absurd "
            "relies on; install a supported version (see the Compatibility page of the docs)."
        )


def _sdk_version() -> str:
    try:
        return metadata.version("absurd-sdk")
    except metadata.PackageNotFoundError:  # pragma: no cover - an uninstalled source tree
        return "(unknown version)"


# -- Absurd's SQL functions and tables ------------------------------------------------------------

SQLSTATE_CANCELLED = "AB001"
"""Raised by Absurd's functions when the task was cancelled."""
SQLSTATE_FAILED = "AB002"
"""Raised by Absurd's functions when the run is no longer the task's running run (failed, lease expired)."""


def end_state_of(error: psycopg.Error) -> Literal["cancelled", "failed"] | None:
    """Which end state an Absurd SQL error reports, if any."""
    if error.sqlstate == SQLSTATE_CANCELLED:
        return "cancelled"
    if error.sqlstate == SQLSTATE_FAILED:
        return "failed"
    return None


async def schedule_run_now(conn: AsyncConnection[Any], queue_name: str, run_id: str) -> None:
    """Make a running run claimable again at once (`absurd.schedule_run`), without using an attempt."""
    await conn.execute("select absurd.schedule_run(%s, %s, absurd.current_time())", (queue_name, run_id))


async def extend_claim(conn: AsyncConnection[Any], queue_name: str, run_id: str, seconds: int) -> None:
    """Extend a run's claim by `seconds` (`absurd.extend_claim`); raises AB001/AB002 when it has ended."""
    await conn.execute("select absurd.extend_claim(%s, %s, %s)", (queue_name, run_id, seconds))


async def fail_run(
    conn: AsyncConnection[Any],
    queue_name: str,
    run_id: str,
    reason: dict[str, Any],
    *,
    retry_after: RetryStrategy | None = None,
    attempt: int = 1,
) -> None:
    """Fail a run (`absurd.fail_run`); with `retry_after`, the next attempt waits that strategy's delay."""
    payload = json.dumps(reason, default=str)
    if retry_after is None:
        await conn.execute("select absurd.fail_run(%s, %s, %s::jsonb, null)", (queue_name, run_id, payload))
        return
    await conn.execute(
        "select absurd.fail_run(%s, %s, %s::jsonb, absurd.current_time()"
        " + make_interval(secs => absurd.retry_delay_seconds(%s::jsonb, %s)))",
        (queue_name, run_id, payload, json.dumps(retry_after), attempt),
    )


async def fail_task_permanently(
    conn: AsyncConnection[Any], queue_name: str, run_id: str, reason: dict[str, Any]
) -> None:
    """Fail the run `run_id` and its task for good, recording `reason`, whatever attempts are left.

    Absurd has no SQL function for this. In one transaction we lock the run (the same lock order as
    `absurd.fail_run` and `absurd.cancel_task`: run, then task), lower the task's `max_attempts` to the
    run's attempt, and call `absurd.fail_run`, which then sees the attempts exhausted: the task
    ends in state `failed` with `reason` as failure reason and `absurd.retry_task` can still retry it.
    Writes to Absurd's `t_<queue>` table (columns `task_id`, `max_attempts`) and reads `r_<queue>`
    (`run_id`, `task_id`, `attempt`); `tests/test_retry.py` pins that.
    """
    runs = sql.Identifier(f"r_{queue_name}")
    tasks = sql.Identifier(f"t_{queue_name}")
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("select task_id, attempt from absurd.{} where run_id = %s for update").format(runs), (run_id,)
        )
        row = await cur.fetchone()
        if row is not None:
            task_id, attempt = cast("tuple[Any, int]", row)
            await conn.execute(
                sql.SQL("update absurd.{} set max_attempts = %s where task_id = %s").format(tasks), (attempt, task_id)
            )
        await fail_run(conn, queue_name, run_id, reason)


# -- Read-only queries for inspection (`inspect_task`, `pydantic-ai-absurd tasks`) -----------------
#
# Absurd's public functions cover a task's result (`absurd.get_task_result`) and its checkpoints
# (`absurd.get_task_checkpoint_states`), which these use. It has none for a task's name, params,
# headers and attempts, for its runs, or for listing tasks: those read Absurd's tables directly,
# `t_<queue>` (tasks) and `r_<queue>` (runs), with the columns of absurd 0.5.1's schema. Each is a
# single read-only statement; `tests/test_inspect.py` pins them against the installed schema.


async def read_task(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """One task's row from `t_<queue>`, with `result` and `failure_reason` from `absurd.get_task_result`.

    Columns: `task_name, params, headers, state, attempts, max_attempts, enqueue_at, first_started_at,
    cancelled_at, last_attempt_run`. `None` when the queue has no such task.
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.params, t.headers, t.state, t.attempts, t.max_attempts,"
        " t.enqueue_at, t.first_started_at, t.cancelled_at, t.last_attempt_run::text as last_attempt_run,"
        " g.result, g.failure_reason"
        " from absurd.{} t cross join lateral absurd.get_task_result(%s, t.task_id) g"
        " where t.task_id = %s"
    ).format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (queue_name, task_id))
    return await _one_dict(cur)


async def read_runs(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[dict[str, Any]]:
    """A task's runs (one per attempt) from `r_<queue>`, oldest first.

    Columns: `run_id, attempt, state, claimed_by, claim_expires_at, available_at, wake_event, started_at`
    (the latest claim), `completed_at, failed_at, failure_reason, created_at`. A run waiting for an event
    without timeout is available at `infinity`, read as `None`.
    """
    query = sql.SQL(
        "select run_id::text as run_id, attempt, state, claimed_by,"
        " nullif(claim_expires_at, 'infinity') as claim_expires_at,"
        " nullif(available_at, 'infinity') as available_at, wake_event,"
        " started_at, completed_at, failed_at, failure_reason, created_at"
        " from absurd.{} where task_id = %s order by attempt, created_at"
    ).format(sql.Identifier(f"r_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    return await _all_dicts(cur)


async def read_checkpoints(
    conn: AsyncConnection[Any], queue_name: str, task_id: str, run_id: str
) -> list[tuple[str, Any, str | None, Any]]:
    """The committed checkpoints `run_id` sees (`absurd.get_task_checkpoint_states`), in write order.

    Rows: `(checkpoint_name, state, owner_run_id, updated_at)`. Given the task's latest run, that is all of them.
    """
    cur = await conn.execute(
        "select checkpoint_name, state, owner_run_id::text, updated_at"
        " from absurd.get_task_checkpoint_states(%s, %s, %s)",
        (queue_name, task_id, run_id),
    )
    return cast("list[tuple[str, Any, str | None, Any]]", await cur.fetchall())


async def list_queue_names(conn: AsyncConnection[Any]) -> list[str]:
    """Every queue's name (`absurd.list_queues()`)."""
    cur = await conn.execute("select queue_name from absurd.list_queues() order by queue_name")
    return [str(row[0]) for row in await cur.fetchall()]


async def list_tasks(
    conn: AsyncConnection[Any],
    queue_name: str,
    *,
    state: str | None = None,
    task_name: str | None = None,
    since_seconds: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Tasks of a queue from `t_<queue>`, newest first (task ids are UUIDv7, so the primary key is in spawn order).

    Each with its latest run from `r_<queue>` (`run_state`, `claimed_by`) and its latest committed checkpoint
    from `c_<queue>` (`last_step`, `last_step_at`).
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.state, t.attempts, t.enqueue_at, t.first_started_at,"
        " t.headers, r.state as run_state, r.claimed_by, r.completed_at, r.failed_at,"
        " c.checkpoint_name as last_step, c.updated_at as last_step_at"
        " from absurd.{tasks} t"
        " left join absurd.{runs} r on r.run_id = t.last_attempt_run"
        " left join lateral (select checkpoint_name, updated_at from absurd.{checkpoints} c"
        "   where c.task_id = t.task_id and c.status = 'committed'"
        "   order by c.updated_at desc limit 1) c on true"
        " where (%(state)s::text is null or t.state = %(state)s)"
        " and (%(name)s::text is null or t.task_name = %(name)s)"
        " and (%(since)s::float8 is null"
        "      or t.enqueue_at >= absurd.current_time() - make_interval(secs => %(since)s::float8))"
        " order by t.task_id desc limit %(limit)s"
    ).format(
        tasks=sql.Identifier(f"t_{queue_name}"),
        runs=sql.Identifier(f"r_{queue_name}"),
        checkpoints=sql.Identifier(f"c_{queue_name}"),
    )
    cur = await conn.execute(query, {"state": state, "name": task_name, "since": since_seconds, "limit": limit})
    return await _all_dicts(cur)


async def database_now(conn: AsyncConnection[Any]) -> Any:
    """Absurd's clock (`absurd.current_time()`), to compute ages against the database's time."""
    cur = await conn.execute("select absurd.current_time()")
    row = await cur.fetchone()
    assert row is not None
    return row[0]


def claimed_task_of(task_ctx: AsyncTaskContext) -> ClaimedTask:
    """The claimed task a context runs (`AsyncTaskContext._task`: run id, attempt, task name, headers)."""
    return task_ctx._task  # pyright: ignore[reportPrivateUsage]


def preloaded_checkpoint_names(task_ctx: AsyncTaskContext) -> frozenset[str]:
    """The checkpoint names in the context's cache now (`AsyncTaskContext._checkpoint_cache`)."""
    return frozenset(task_ctx._checkpoint_cache)  # pyright: ignore[reportPrivateUsage]


def step_encounters(task_ctx: AsyncTaskContext) -> dict[str, int]:
    """How often each step name was begun in this execution (`AsyncTaskContext._step_name_counter`)."""
    return task_ctx._step_name_counter  # pyright: ignore[reportPrivateUsage]


def checkpoint_state(task_ctx: AsyncTaskContext, name: str) -> Any:
    """The cached state of checkpoint `name` (`AsyncTaskContext._checkpoint_cache`), or None."""
    return task_ctx._checkpoint_cache.get(name)  # pyright: ignore[reportPrivateUsage]


async def _one_dict(cur: psycopg.AsyncCursor[Any]) -> dict[str, Any] | None:
    row = await cur.fetchone()
    if row is None:
        return None
    names = [column.name for column in cur.description or ()]
    return dict(zip(names, row, strict=True))


async def _all_dicts(cur: psycopg.AsyncCursor[Any]) -> list[dict[str, Any]]:
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def emit_event_sql(conn: AsyncConnection[Any], queue_name: str, event_name: str, payload: Any) -> None:
    """Emit an event on `conn` (`absurd.emit_event`), inside the caller's transaction; first emit wins."""
    await conn.execute("select absurd.emit_event(%s, %s, %s::jsonb)", (queue_name, event_name, json.dumps(payload)))


TERMINAL_TASK_STATES = ("completed", "failed", "cancelled")
"""States of a row of `absurd.t_<queue>` after which the task never runs again (unless retried by hand)."""


def task_states(queue_name: str) -> sql.Composed:
    """`absurd.t_<queue>` as an identifier (columns `task_id uuid`, `state text`), for joins on task state."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"t_{queue_name}"))


def emitted_events(queue_name: str) -> sql.Composed:
    """`absurd.e_<queue>` as an identifier (`event_name text primary key`, `payload jsonb`; SQL NULL = not emitted)."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"e_{queue_name}"))


async def existing_queues(conn: AsyncConnection[Any], names: list[str]) -> list[str]:
    """Which of `names` are queues of this database (rows of `absurd.queues`)."""
    cur = await conn.execute("select queue_name from absurd.queues where queue_name = any(%s)", (names,))
    return [str(row[0]) for row in await cur.fetchall()]


# -- Deploy safety: offline task contexts (verify) and forks (`pydantic_ai_absurd.verify`) -----------
#
# Verification runs a registered handler against a recorded task without a database: the context is an
# `AsyncTaskContext` (subclass) built like the SDK's `_create_async_task_context` does, with the recorded
# checkpoints preloaded in `_checkpoint_cache` and the SDK's own `_get_checkpoint_name` numbering
# (`_step_name_counter`), installed as the current context through `absurd_sdk._current_task_context`.
# `_registry[name]["handler"]` is the registered handler. A fork is one transaction of Absurd's public
# functions (`absurd.spawn_task`, then `absurd.set_task_checkpoint_state` owned by the new task's run), so
# no worker can claim the new task before its copied checkpoints exist. Pinned by
# `tests/test_verify_sandbox.py`.

_OFFLINE_CONTEXT_ATTRIBUTES = (
    "_conn",
    "_queue_name",
    "_task",
    "_checkpoint_cache",
    "_claim_timeout",
    "_step_name_counter",
)


@functools.cache
def missing_offline_context_names() -> tuple[str, ...]:
    """The private `absurd_sdk` names an offline task context needs that the installed SDK lacks."""
    import absurd_sdk

    missing = [
        f"AsyncTaskContext.{name}"
        for name in _OFFLINE_CONTEXT_ATTRIBUTES
        if name not in AsyncTaskContext.__annotations__
    ]
    if not callable(getattr(AsyncTaskContext, "_get_checkpoint_name", None)):
        missing.append("AsyncTaskContext._get_checkpoint_name")
    if not hasattr(absurd_sdk, "_current_task_context"):
        missing.append("absurd_sdk._current_task_context")
    if "_registry" not in AsyncAbsurd("postgresql://", queue_name="probe").__dict__:
        missing.append("AsyncAbsurd._registry")
    return tuple(missing)


def check_offline_context_names() -> None:
    """Refuse to verify on an `absurd_sdk` that lacks a name the offline context needs (one-line error)."""
    missing = missing_offline_context_names()
    if missing:
        raise IncompatibleSdkError(
            f"The installed absurd-sdk {_sdk_version()} lacks {', '.join(missing)}, which pydantic-ai-absurd "
            "relies on (to verify recorded tasks); install a supported version (see the Compatibility page "
            "of the docs)."
        )


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


async def task_ids_in_states(conn: AsyncConnection[Any], queue_name: str, states: list[str]) -> list[str]:
    """IDs of the tasks of `queue_name` whose state is one of `states`, oldest first (reads `t_<queue>`)."""
    query = sql.SQL("select task_id::text from absurd.{} where state = any(%s) order by enqueue_at, task_id").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (states,))
    return [str(row[0]) for row in await cur.fetchall()]


async def task_options(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """A task's `retry_strategy`, `max_attempts` and `cancellation` (reads `t_<queue>`), for a copy of it."""
    query = sql.SQL("select retry_strategy, max_attempts, cancellation from absurd.{} where task_id = %s").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (task_id,))
    return await _one_dict(cur)


async def spawn_with_checkpoints(
    conn: AsyncConnection[Any],
    queue_name: str,
    task_name: str,
    params: Any,
    options: dict[str, Any],
    checkpoints: list[tuple[str, Any]],
) -> str:
    """Spawn a task that already has `checkpoints` (name, state), in one transaction; return its ID.

    `absurd.spawn_task`, then `absurd.set_task_checkpoint_state` for each checkpoint, owned by the new run.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "select task_id::text, run_id::text from absurd.spawn_task(%s, %s, %s::jsonb, %s::jsonb)",
            (queue_name, task_name, json.dumps(params), json.dumps(options)),
        )
        row = await cur.fetchone()
        assert row is not None
        task_id, run_id = str(row[0]), str(row[1])
        for name, state in checkpoints:
            await conn.execute(
                "select absurd.set_task_checkpoint_state(%s, %s, %s, %s::jsonb, %s, null)",
                (queue_name, task_id, name, json.dumps(state), run_id),
            )
    return task_id


def task_connection(task_ctx: AsyncTaskContext) -> AsyncConnection[Any]:
    """The connection the running task writes its checkpoints on (`AsyncTaskContext._conn`).

    The event log (`pydantic_ai_absurd.events`) appends a step's events on it, so they reach Postgres in
    order with that step's own writes, without a pool of its own.
    """
    return task_ctx._conn  # pyright: ignore[reportPrivateUsage]


async def task_state(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> str | None:
    """A task's state (`pending`, `running`, `sleeping`, `completed`, `failed`, `cancelled`) from `t_<queue>`.

    `None` when the queue has no such task (a wrong id, or a task removed by Absurd's cleanup).
    """
    query = sql.SQL("select state from absurd.{} where task_id = %s").format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


# -- fast takeover: a worker's liveness lock, and the hand-back of a dead worker's runs ------------------------


# The advisory lock key (bigint) of a worker identity: `hashtextextended(identity, 0)`.


async def backend_pid(conn: AsyncConnection[Any]) -> int:
    """`pg_backend_pid()` of the server process answering this statement on `conn`."""
    cur = await conn.execute("select pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def hold_worker_lock(conn: AsyncConnection[Any], identity: str) -> int:
    """Take the session-level shared advisory lock of `identity` on `conn`; return the backend pid holding it.

    `pg_advisory_lock_shared(hashtextextended(identity, 0))`: held until the session ends, i.e. until the
    process dies or the connection is closed (Postgres releases session locks when the backend exits).
    Shared, so the worker's several lock connections never wait for each other.
    """
    cur = await conn.execute("select pg_advisory_lock_shared(hashtextextended(%s, 0)), pg_backend_pid()", (identity,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[1])


async def worker_lock_held(conn: AsyncConnection[Any], identity: str, pid: int) -> bool:
    """Whether the backend `pid` holds the advisory lock of `identity` in this database (reads `pg_locks`).

    An advisory lock on a bigint key shows in `pg_locks` with `classid` = its high and `objid` = its low
    32 bits and `objsubid` = 1.
    """
    cur = await conn.execute(
        "select exists (select 1 from pg_locks l"
        " where l.locktype = 'advisory' and l.granted and l.objsubid = 1 and l.pid = %s"
        " and l.database = (select oid from pg_database where datname = current_database())"
        " and ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended(%s, 0))",
        (pid, identity),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def hand_back_orphaned_runs(
    conn: AsyncConnection[Any], queue_name: str, claim_prefix: str, own_identity: str
) -> list[tuple[str, str, str]]:
    """Hand back the running runs of `queue_name` whose worker is dead; return (run_id, task_id, claimed_by).

    A run is a candidate when its `claimed_by` starts with `claim_prefix` (claims of this package's
    workers: runs of other workers are never touched) and is not `own_identity`. It is orphaned when
    `pg_try_advisory_xact_lock` on its worker's lock key succeeds: no session holds that worker's shared
    lock (see `hold_worker_lock`), so every connection of that worker is gone. Each candidate is locked
    first (`for update skip locked`: one peer handles it), and an orphaned one is handed back with
    `absurd.schedule_run(queue, run_id, now)`: claimable at once, no attempt used. One transaction; the
    transaction-level locks end with it. Reads `absurd.r_<queue>` (`run_id`, `task_id`, `state`, `claimed_by`).
    """
    runs = sql.Identifier(f"r_{queue_name}")
    escaped = claim_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = sql.SQL(
        "select run_id::text, task_id::text, claimed_by from absurd.{}"
        " where state = 'running' and claimed_by like %s and claimed_by <> %s"
        " for update skip locked"
    ).format(runs)
    handed_back: list[tuple[str, str, str]] = []
    async with conn.transaction():
        cur = await conn.execute(query, (escaped + "%", own_identity))
        candidates = [(str(a), str(b), str(c)) for a, b, c in await cur.fetchall()]
        for run_id, task_id, claimed_by in candidates:
            cur = await conn.execute("select pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (claimed_by,))
            row = await cur.fetchone()
            if not (row and row[0]):
                continue  # its worker is alive (it holds its lock), even if paused or slow
            await conn.execute("select absurd.schedule_run(%s, %s, absurd.current_time())", (queue_name, run_id))
            handed_back.append((run_id, task_id, claimed_by))
    return handed_back
