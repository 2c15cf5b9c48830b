"""Sync tools of a task run in threads the worker can wait for (a thread cannot be interrupted)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["TaskThreads"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class TaskThreads(concurrent.futures.Executor):
    """An executor for one task execution: runs calls on the worker's pool and remembers the unfinished ones.

    Installed with `Agent.using_thread_executor` around each execution, so the sync tools and callbacks
    Pydantic AI runs in threads for this task go through it. Cancelling the task cannot stop such a
    thread; the worker awaits `wait()` before it hands the run back, so the same step never runs in
    two places at once.
    """

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self._pool = pool
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        """Run `fn(*args, **kwargs)` on the worker's pool, tracked until it returns."""
        future = self._pool.submit(fn, *args, **kwargs)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    @property
    def running(self) -> int:
        """Calls submitted and not finished yet."""
        return sum(1 for future in self._pending if not future.done())

    async def wait(self) -> None:
        """Wait until every call submitted so far has returned (or raised)."""
        pending = [asyncio.wrap_future(future) for future in list(self._pending) if not future.done()]
        if pending:
            await asyncio.wait(pending)
