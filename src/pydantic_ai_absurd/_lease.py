"""Keep an Absurd claim alive while step bodies run, and abort them when Absurd says the run is over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from absurd_sdk import AsyncTaskContext, CancelledTask, FailedTask

from ._sdk_private import claim_timeout_of

_T = TypeVar("_T")

logger = logging.getLogger("pydantic_ai_absurd.lease")

MIN_HEARTBEAT_INTERVAL = 0.2
"""Seconds; heartbeats are never sent more often than this, whatever the claim timeout."""


class LeaseKeeper:
    """Heartbeats one task run's claim while at least one step body runs.

    Absurd extends a claim only when a checkpoint is written or `heartbeat()` is called. A model or tool
    call longer than the claim timeout would let another worker claim the task and run the same step
    again. One keeper serves all the parallel steps of a task execution: it sends one heartbeat every
    third of the claim timeout, and when a heartbeat reports that the task was cancelled or the run has
    failed, it cancels every running body and makes each step raise that Absurd exception.
    """

    def __init__(self, task_ctx: AsyncTaskContext) -> None:
        self._task_ctx = task_ctx
        self._bodies: set[asyncio.Task[object]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended: CancelledTask | FailedTask | None = None

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats."""
        return max(claim_timeout_of(self._task_ctx) / 3, MIN_HEARTBEAT_INTERVAL)

    async def run(self, body: Callable[[], Awaitable[_T]]) -> _T:
        """Run `body` with the claim kept alive; raise Absurd's exception if the run ends meanwhile."""
        if self._ended is not None:
            raise self._ended

        async def call() -> _T:
            return await body()

        task: asyncio.Task[_T] = asyncio.ensure_future(call())
        self._bodies.add(task)  # pyright: ignore[reportArgumentType]
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())
        try:
            return await task
        except asyncio.CancelledError:
            ended = self._ended
            current = asyncio.current_task()
            if ended is not None and (current is None or current.cancelling() == 0):
                raise ended from None
            raise
        finally:
            self._bodies.discard(task)  # pyright: ignore[reportArgumentType]
            if not self._bodies:
                self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._task_ctx.heartbeat()
            except (CancelledTask, FailedTask) as ended:
                self._ended = ended
                for body in list(self._bodies):
                    body.cancel()
                return
            except Exception:
                # The next checkpoint write reports a lost connection; a missed heartbeat alone is not fatal.
                logger.warning("Heartbeat for task %s failed", self._task_ctx.task_id, exc_info=True)
