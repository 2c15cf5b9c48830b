"""Keep an Absurd claim alive while a task execution holds work, and abort it when Absurd says the run is over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from absurd_sdk import AsyncTaskContext, CancelledTask, FailedTask

from ._absurd import claim_timeout_of

__all__ = ["MIN_HEARTBEAT_INTERVAL", "HeartbeatGroup", "LeaseKeeper"]

_T = TypeVar("_T")

logger = logging.getLogger("pydantic_ai_absurd.lease")

MIN_HEARTBEAT_INTERVAL = 0.2
"""Seconds; heartbeats are never sent more often than this, whatever the claim timeout."""


class HeartbeatGroup(Protocol):
    """Heartbeats the claims of many runs in one statement (the production worker's bulk heartbeats).

    A keeper with a group joins it while it holds work instead of heartbeating on its own; the group
    extends the claims of all its keepers every heartbeat interval and calls `LeaseKeeper.report_end`
    on each whose run Absurd reports cancelled or failed.
    """

    def join(self, keeper: LeaseKeeper) -> None:
        """Keep `keeper`'s claim alive from now on."""
        ...

    def leave(self, keeper: LeaseKeeper) -> None:
        """Stop keeping `keeper`'s claim alive."""
        ...


class LeaseKeeper:
    """Heartbeats one task run's claim while it holds work: a step body, or the whole execution.

    Absurd extends a claim only when a checkpoint is written or `heartbeat()` is called. A model or tool
    call longer than the claim timeout would let another worker claim the task and run the same step
    again. One keeper serves a whole task execution (all its parallel steps, and the worker's hold on
    the execution itself): it sends one heartbeat every third of the claim timeout while anything is
    held. When a heartbeat reports that the task was cancelled or the run has failed, it remembers that
    end state, cancels every running body and makes each step raise that Absurd exception. The keeper is
    where an execution's end state is kept (`ExecutionState.ended` reads it), whoever reported it.

    The keeper owns the bodies it starts: when the caller of `run` is cancelled, the body is cancelled
    and awaited before `run` returns, so no body of a handed-back run still runs when another worker
    starts the same step. A synchronous tool running in a thread cannot be interrupted: the production worker
    waits for its thread before it hands the run back.
    """

    def __init__(self, task_ctx: AsyncTaskContext, *, on_end: Callable[[], None] | None = None) -> None:
        """Keep `task_ctx`'s claim; `on_end` is called where the first end state is reported."""
        self._task_ctx = task_ctx
        self._on_end = on_end
        self._bodies: set[asyncio.Task[Any]] = set()
        self._holds = 0
        self._held_tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.ended: BaseException | None = None
        """The Absurd end state a heartbeat or write reported first, if any."""
        self.group: HeartbeatGroup | None = None
        """Heartbeats this keeper's claim with others' in one statement; None: the keeper heartbeats itself."""

    @property
    def task_ctx(self) -> AsyncTaskContext:
        """The task context whose claim this keeper keeps."""
        return self._task_ctx

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats."""
        return max(claim_timeout_of(self._task_ctx) / 3, MIN_HEARTBEAT_INTERVAL)

    def end(self, ended: BaseException) -> None:
        """Remember `ended` unless an end state was reported before."""
        if self.ended is None:
            self.ended = ended
            if self._on_end is not None:
                self._on_end()

    async def run(self, body: Callable[[], Awaitable[_T]]) -> _T:
        """Run `body` with the claim kept alive; raise Absurd's exception if the run ends meanwhile."""
        ended = self.ended
        if ended is not None:
            raise ended

        async def call() -> _T:
            return await body()

        task: asyncio.Task[_T] = asyncio.ensure_future(call())
        self._bodies.add(task)
        self._acquire()
        try:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})  # own the body: it has stopped before we return
                ended = self.ended
                current = asyncio.current_task()
                if ended is not None and (current is None or current.cancelling() == 0):
                    raise ended from None
                raise
        finally:
            self._bodies.discard(task)
            self._release()

    def hold(self) -> AbstractAsyncContextManager[None]:
        """Keep the claim alive for the code inside (the worker holds a whole execution this way).

        When a heartbeat reports an end state while no step body runs, the holding task is cancelled.
        """
        return _Hold(self._enter_hold, self._exit_hold)

    def _enter_hold(self) -> asyncio.Task[Any] | None:
        current = asyncio.current_task()
        if current is not None:
            self._held_tasks.add(current)
        self._acquire()
        return current

    def _exit_hold(self, current: asyncio.Task[Any] | None) -> None:
        self._release()
        if current is not None:
            self._held_tasks.discard(current)

    def report_end(self, ended: BaseException) -> None:
        """A heartbeat reported `ended`: remember it and cancel the running bodies (else the holding tasks)."""
        self.end(ended)
        for target in list(self._bodies) or list(self._held_tasks):
            target.cancel()

    def _acquire(self) -> None:
        self._holds += 1
        if self._holds > 1:
            return
        if self.group is not None:
            self.group.join(self)
        elif self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())

    def _release(self) -> None:
        self._holds -= 1
        if self._holds > 0:
            return
        if self.group is not None:
            self.group.leave(self)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._task_ctx.heartbeat()
            except (CancelledTask, FailedTask) as ended:
                self.report_end(ended)
                return
            except Exception:
                # The next checkpoint write reports a lost connection; a missed heartbeat alone is not fatal.
                logger.warning("Heartbeat for task %s failed", self._task_ctx.task_id, exc_info=True)


class _Hold:
    """`LeaseKeeper.hold()` (a class: cheaper than a generator, and the worker enters one per execution)."""

    __slots__ = ("_current", "_enter", "_exit")

    def __init__(
        self,
        enter: Callable[[], asyncio.Task[Any] | None],
        leave: Callable[[asyncio.Task[Any] | None], None],
    ) -> None:
        self._enter = enter
        self._exit = leave
        self._current: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        self._current = self._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._exit(self._current)
