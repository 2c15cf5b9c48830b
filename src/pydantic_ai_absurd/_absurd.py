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
- `AsyncTaskContext._get_checkpoint_name` and `_checkpoint_cache`: `begin_step` without the extra query
  (pinned by `tests/test_compat.py`). The SDK preloads every checkpoint of the task when it creates the
  context, and updates the cache on each write of this execution; a name missing from it has no
  checkpoint, yet `begin_step` asks Postgres again, doubling the statements of every new step. Any other
  writer would be an older run of the task, and Absurd refuses its writes once a newer run exists.
"""

from __future__ import annotations

import functools
import json
from importlib import metadata
from typing import Any, Literal, cast

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
    "extend_claim",
    "fail_run",
    "fail_task_permanently",
    "begin_step",
    "is_registered",
    "missing_private_names",
    "registered_task_names",
    "schedule_run_now",
]


def _registry(absurd: AsyncAbsurd) -> dict[str, dict[str, Any]]:
    return absurd._registry  # pyright: ignore[reportPrivateUsage]


async def execute_claimed_task(
    absurd: AsyncAbsurd,
    conn: AsyncConnection[Any],
    task: ClaimedTask,
    claim_timeout: int,
    hooks: AbsurdHooks,
) -> None:
    """Execute `task` (already claimed) with `absurd`'s handlers, on `conn` instead of `absurd`'s connection.

    Uses `AsyncAbsurd._registry` and `AsyncAbsurd._execute_task` (private, absurd-sdk 0.5.1).
    """
    client = AsyncAbsurd(conn, queue_name=client_queue_name(absurd), hooks=hooks)
    client._registry = _registry(absurd)  # pyright: ignore[reportPrivateUsage]
    await client._execute_task(task, claim_timeout)  # pyright: ignore[reportPrivateUsage]


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


_CONTEXT_ATTRIBUTES = ("_claim_timeout", "_checkpoint_cache")
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
