"""Shutdown of a worker: let in-flight runs finish for a while, then cancel them and hand them back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from ._task import Running

__all__ = ["cancel_in_flight", "drain"]

logger = logging.getLogger("pydantic_ai_absurd.worker")

InFlight = Mapping["asyncio.Task[None]", Running]


async def drain(in_flight: InFlight, timeout: float, force: asyncio.Event) -> None:
    """Wait for in-flight runs until they finish, `timeout` passes or `force` is set; then cancel the rest."""
    deadline = time.monotonic() + timeout
    forced = asyncio.ensure_future(force.wait())
    try:
        while True:
            pending = {job for job in in_flight if not job.done()}
            remaining = deadline - time.monotonic()
            if not pending or forced.done() or remaining <= 0:
                break
            await asyncio.wait({*pending, forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
    await cancel_in_flight(in_flight, force)


async def cancel_in_flight(in_flight: InFlight, force: asyncio.Event) -> None:
    """Cancel the in-flight runs and wait until each has stopped and handed its run back.

    A step body is cancelled and awaited before its run is handed back, so no body of this worker still
    runs when another worker starts the same step. A synchronous tool running in a thread cannot be
    interrupted: its run waits for it (its lease kept alive meanwhile) until it returns, or until `force`.
    """
    pending = [job for job in in_flight if not job.done()]
    if not pending:
        return
    logger.warning("cancelling and handing back %d in-flight task(s)", len(pending))
    for job in pending:
        in_flight[job].stop_reason = "shutdown"
        job.cancel()
    forced = asyncio.ensure_future(force.wait())
    try:
        while not forced.done() and any(not job.done() for job in pending):
            await asyncio.wait({*pending, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
