"""Sync tools of a task run in threads the worker can wait for (a thread cannot be interrupted)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

__all__ = ["TaskThreads", "WorkerThreads"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_current: ContextVar[TaskThreads | None] = ContextVar("pydantic_ai_absurd_task_threads", default=None)


class WorkerThreads(concurrent.futures.Executor):
    """The worker's executor for sync calls: runs them on its pool, tracked by the execution that made them.

    Installed once per worker with `Agent.using_thread_executor` around the claim loop, so every execution
    (an asyncio task started there) inherits it: the sync tools and callbacks Pydantic AI runs in threads
    go through it. Each call is remembered by the `TaskThreads` of the execution it belongs to (a context
    variable each execution sets), which the worker awaits before it lets go of the run.
    """

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self._pool = pool

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        """Run `fn(*args, **kwargs)` on the worker's pool, tracked by the current execution if there is one."""
        future = self._pool.submit(fn, *args, **kwargs)
        threads = _current.get()
        if threads is not None:
            threads.track(future)
        return future


class TaskThreads:
    """The sync calls of one task execution still running in the worker's threads.

    Cancelling the task cannot stop such a thread; the worker awaits `wait()` before it hands the run
    back, so the same step never runs in two places at once.
    """

    def __init__(self) -> None:
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def enter(self) -> None:
        """Track the sync calls made from now on in the current context (an execution's own asyncio task)."""
        _current.set(self)

    def track(self, future: concurrent.futures.Future[Any]) -> None:
        """Remember `future` until it is done."""
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    @property
    def running(self) -> int:
        """Calls submitted and not finished yet."""
        if not self._pending:
            return 0
        return sum(1 for future in list(self._pending) if not future.done())

    async def wait(self) -> None:
        """Wait until every call submitted so far has returned (or raised)."""
        pending = [asyncio.wrap_future(future) for future in list(self._pending) if not future.done()]
        if pending:
            await asyncio.wait(pending)
