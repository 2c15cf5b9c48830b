"""The only place where this package touches private names of `absurd_sdk`.

`absurd_sdk.AsyncAbsurd` runs every task of a worker on one shared connection and offers no public
way to execute a claimed task on another connection. To give each in-flight task its own pooled
connection, the worker builds one short-lived `AsyncAbsurd` per task on a pooled connection (public
constructor) and lets it execute the claimed task with the registrations of the user's client.

Private names used (absurd-sdk 0.5.1), all pinned by `tests/test_worker_sdk_private.py`:

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

from typing import Any

from absurd_sdk import AbsurdHooks, AsyncAbsurd, AsyncTaskContext, ClaimedTask, StepHandle
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "claim_timeout_of",
    "client_conninfo",
    "client_hooks",
    "client_queue_name",
    "execute_claimed_task",
    "execute_task",
    "begin_step",
    "is_registered",
    "registered_task_names",
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


DEFAULT_CLAIM_TIMEOUT = 120
"""Absurd's own default claim timeout, used if a context does not expose one."""


def claim_timeout_of(task_ctx: AsyncTaskContext) -> float:
    """The claim timeout, in seconds, the worker claimed this task run with."""
    value = getattr(task_ctx, "_claim_timeout", None)
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return float(DEFAULT_CLAIM_TIMEOUT)


async def begin_step(task_ctx: AsyncTaskContext, name: str) -> StepHandle:
    """`task_ctx.begin_step(name)`, answered from the preloaded checkpoints instead of one more query.

    Falls back to the public `begin_step` if the SDK's private names change.
    """
    cache = getattr(task_ctx, "_checkpoint_cache", None)
    next_name = getattr(task_ctx, "_get_checkpoint_name", None)
    if not isinstance(cache, dict) or not callable(next_name):
        return await task_ctx.begin_step(name)
    checkpoint_name = next_name(name)
    if not isinstance(checkpoint_name, str):  # pragma: no cover - only if the SDK changes shape
        raise TypeError("AsyncTaskContext._get_checkpoint_name no longer returns a str")
    if checkpoint_name in cache:
        return StepHandle(name=name, checkpoint_name=checkpoint_name, done=True, state=cache[checkpoint_name])  # pyright: ignore[reportUnknownArgumentType]
    return StepHandle(name=name, checkpoint_name=checkpoint_name, done=False)
