"""Bulk heartbeats: one statement per heartbeat interval keeps the claims of all of a worker's runs alive."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from absurd_sdk import CancelledTask, FailedTask

from .._absurd import Borrow, claimed_task_of, extend_claims
from .._lease import MIN_HEARTBEAT_INTERVAL, LeaseKeeper
from ..errors import one_line

__all__ = ["BulkHeartbeats"]

logger = logging.getLogger("pydantic_ai_absurd.worker")


class BulkHeartbeats:
    """The `HeartbeatGroup` of a worker: every `claim_timeout / 3` seconds, one `extend_claims` statement.

    Each execution's lease keeper joins while it holds work (the worker holds a whole execution); a run
    Absurd reports cancelled or failed gets `CancelledTask` / `FailedTask` through its keeper, which cancels
    its running step bodies (or the execution) as its own heartbeat would. A run claimed in the identity
    recorded in `claims` is extended only while it still runs in that identity: one a peer took over (this
    worker was presumed dead) gets `FailedTask`, and stops without writing. A failed statement is logged and
    tried again at the next interval; a claim lasts three intervals.
    """

    def __init__(self, borrow: Borrow, queue: str, claim_timeout: int) -> None:
        self._borrow = borrow
        self._queue = queue
        self._claim_timeout = claim_timeout
        self._keepers: dict[LeaseKeeper, None] = {}
        self.claims: dict[str, str] = {}
        """`claimed_by` of the in-flight runs, by run id (the worker records each claim while it runs)."""
        self._loop: asyncio.Task[None] | None = None
        self.statements = 0
        """Heartbeat statements sent so far."""

    @property
    def interval(self) -> float:
        """Seconds between two heartbeat statements."""
        return max(self._claim_timeout / 3, MIN_HEARTBEAT_INTERVAL)

    def join(self, keeper: LeaseKeeper) -> None:
        """Keep `keeper`'s claim alive from the next beat on (starts the beat loop on first use)."""
        self._keepers[keeper] = None
        if self._loop is None:
            self._loop = asyncio.ensure_future(self._run())

    def leave(self, keeper: LeaseKeeper) -> None:
        """Stop keeping `keeper`'s claim alive."""
        self._keepers.pop(keeper, None)

    async def close(self) -> None:
        """Stop the beat loop."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            await asyncio.wait({loop})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._keepers:
                await self.beat()

    async def beat(self) -> None:
        """Extend the claims of every joined run now; report the ended ones to their keepers."""
        by_run = {str(claimed_task_of(keeper.task_ctx)["run_id"]): keeper for keeper in self._keepers}
        runs = [(run_id, self.claims.get(run_id)) for run_id in by_run]
        try:
            async with self._borrow() as conn:
                self.statements += 1
                ended = await extend_claims(conn, self._queue, runs, self._claim_timeout)
        except (psycopg.Error, OSError) as err:
            logger.warning(
                "heartbeat of %d run(s) failed (%s); trying again in %.1fs",
                len(by_run),
                one_line(err, with_type=True),
                self.interval,
            )
            return
        for run_id, state in ended:
            keeper = by_run[run_id]
            if keeper not in self._keepers:
                continue  # its execution let go of the claim meanwhile (it completed or suspended)
            if state == "taken_over":
                logger.warning(
                    "run_id=%s was taken over by a peer (this worker was presumed dead); stopping it", run_id
                )
            keeper.report_end(CancelledTask() if state == "cancelled" else FailedTask())
