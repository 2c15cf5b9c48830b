"""One claimed task on a worker: its bookkeeping, the `wrap_task_execution` hook, and its outcome log line."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from absurd_sdk import AbsurdHooks, AsyncTaskContext, CancelledTask, ClaimedTask, FailedTask, SuspendTask

from .._absurd import BorrowedConnection, Preloaded, end_state_of
from .._execution import execution_state
from .._lease import HeartbeatGroup
from .._text import visible
from ..errors import one_line
from ._config import WorkerHealth
from ._failure import record_task_failure
from ._retry import RetryPolicy, check_json_result
from ._threads import TaskThreads

__all__ = ["ConnectionLost", "Running", "log_outcome", "wrap_execution"]

logger = logging.getLogger("pydantic_ai_absurd.worker")

Outcome = Literal["completed", "suspended", "retry", "failed", "cancelled", "lost"]


class ConnectionLost(BaseException):
    """The task's own connection broke; raised past the SDK's `except Exception` to hand the run back."""


@dataclass
class Running:
    """A claimed task while this worker runs it."""

    task: ClaimedTask
    outcome: Outcome | None = None
    reason: str | None = None
    error: BaseException | None = None
    stop_reason: Literal["shutdown", "presumed_dead"] | None = None
    claimed_by: str | None = None
    """The identity this worker claimed the run in (fast takeover: a lock or a liveness-row identity)."""
    dropped: bool = False
    """Peers presumed this worker dead and took the run over: stopped, never handed back (`_liveness_rows.py`)."""
    preloaded: Preloaded | None = None
    """The run's checkpoints, read with its claim: the SDK's preload of them sends no statement."""

    def describe(self) -> str:
        """`task_id=... task=... attempt=...`, as every log line about the task shows it."""
        return f"task_id={self.task['task_id']} task={self.task['task_name']} attempt={self.task['attempt']}"

    __str__ = describe  # a log call formats it only when the line is emitted


_NO_HOLD = contextlib.nullcontext()


async def _wait_for_threads(running: Running, threads: TaskThreads) -> None:
    logger.warning(
        "waiting for %d synchronous call(s) of %s still running in a thread (a thread cannot be interrupted); "
        "the run is handed back when they return",
        threads.running,
        running.describe(),
    )
    await threads.wait()


def wrap_execution(
    running: Running,
    conn: BorrowedConnection,
    queue: str,
    user_hooks: AbsurdHooks,
    policy: RetryPolicy,
    *,
    heartbeat: bool,
    threads: TaskThreads,
    heartbeats: HeartbeatGroup | None = None,
) -> AbsurdHooks:
    """The hooks of the per-task client: the user's, with `wrap_task_execution` wrapped by the worker's.

    With `heartbeats`, the execution's lease keeper joins that group instead of heartbeating on its own.
    """
    user_wrap = user_hooks.get("wrap_task_execution")
    task = running.task

    async def wrap(ctx: Any, execute: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await _execute_held(ctx, execute, user_wrap, running, threads, heartbeat, heartbeats)
            check_json_result(task["task_name"], result)
        except SuspendTask:
            running.outcome = "suspended"
            raise
        except CancelledTask:
            running.outcome = "cancelled"
            raise
        except FailedTask:
            running.outcome = "lost"
            raise
        except Exception as err:
            await _record_failure(running, conn, queue, err, policy)
            raise FailedTask() from err  # the run is failed already; the SDK ignores FailedTask
        running.outcome = "completed"
        return result

    return {**user_hooks, "wrap_task_execution": wrap}


async def _execute_held(
    ctx: AsyncTaskContext,
    execute: Callable[[], Awaitable[Any]],
    user_wrap: Callable[..., Any] | None,
    running: Running,
    threads: TaskThreads,
    heartbeat: bool,
    heartbeats: HeartbeatGroup | None,
) -> Any:
    """Run the execution (through the user's hook) holding the engine's lease keeper; map its cancellation.

    When a heartbeat reports the task cancelled (or the run failed elsewhere) while no step body runs, the
    keeper cancels the execution; the cancellation that reaches us then is raised as `CancelledTask` /
    `FailedTask`, the one type user code and the SDK see for it. Before the lease is let go, the sync
    tools of the task still running in threads are awaited (their claim kept alive meanwhile).
    """
    state = execution_state(ctx)
    if heartbeats is not None:
        state.lease.group = heartbeats
    try:
        async with state.lease.hold() if heartbeat else _NO_HOLD:
            try:
                if user_wrap is None:
                    return await execute()
                result = user_wrap(ctx, execute)
                return await result if inspect.isawaitable(result) else result
            finally:
                if threads.running:
                    await _wait_for_threads(running, threads)
    except asyncio.CancelledError:
        ended = state.ended
        if ended is None or running.stop_reason is not None or not isinstance(ended, CancelledTask | FailedTask):
            raise
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        raise ended from None


async def _record_failure(
    running: Running, conn: BorrowedConnection, queue: str, err: Exception, policy: RetryPolicy
) -> None:
    """Fail the run after `err` per the retry policy; raise Absurd's end state if the run has ended meanwhile."""
    if conn.broken:
        raise ConnectionLost() from err
    running.error = err
    try:
        async with conn.borrow() as own:
            running.outcome, running.reason = await record_task_failure(own, queue, running.task, err, policy)
    except psycopg.Error as db_err:
        ended = end_state_of(db_err)
        if ended == "cancelled":
            running.outcome = "cancelled"
            raise CancelledTask() from err
        if ended == "failed":
            running.outcome = "lost"
            raise FailedTask() from err
        if conn.broken:
            raise ConnectionLost() from err
        raise


def log_outcome(running: Running, health: WorkerHealth) -> None:
    """Count the outcome in `health` and log its one line."""
    what = running
    match running.outcome:
        case "completed":
            health.completed += 1
            logger.info("completed %s", what)
        case "suspended":
            health.suspended += 1
            logger.info("suspended %s (sleeping or waiting for an event)", what)
        case "retry":
            health.retried += 1
            logger.warning("failed %s, will retry: %s", what, describe_error(running.error))
        case "failed":
            health.failed += 1
            if running.reason is not None:
                logger.error(
                    "failed %s for good (non-retryable: %s): %s", what, running.reason, describe_error(running.error)
                )
            else:
                logger.error("failed %s for good (attempts exhausted): %s", what, describe_error(running.error))
        case "cancelled":
            health.cancelled += 1
            logger.info("cancelled %s: the task was cancelled; its handler stopped", what)
        case "lost":
            health.lost += 1
            logger.warning(
                "lost the claim of %s: the run was failed or handed back elsewhere (lease expired?); stopped it", what
            )
        case None:
            pass  # unknown task deferred by Absurd, or a queue mismatch failed by it


def describe_error(err: BaseException | None) -> str:
    """One line for an error (or `?`), control characters and lone surrogates (model text) escaped."""
    return "?" if err is None else visible(one_line(err, with_type=True))
