"""Signal handlers, event helpers and bounded clean-up steps of the worker loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable

__all__ = ["SHUTDOWN_STEP_TIMEOUT", "install_signal_handlers", "settled", "wait_any"]

logger = logging.getLogger("pydantic_ai_absurd.worker")


def install_signal_handlers(handler: Callable[[signal.Signals], None]) -> list[Callable[[], None]]:
    """Call `handler(sig)` on SIGTERM/SIGINT in the running loop; return the functions that remove them."""
    loop = asyncio.get_running_loop()
    removers: list[Callable[[], None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not the main thread / Windows
            continue
        removers.append(functools.partial(_remove_signal_handler, loop, sig))
    return removers


def _remove_signal_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    loop.remove_signal_handler(sig)


async def wait_any(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


SHUTDOWN_STEP_TIMEOUT = 10.0
"""Seconds each clean-up step of a stopping worker may take before it is abandoned (with a log line)."""


async def settled(step: Awaitable[object], what: str) -> None:
    """Await a clean-up step of shutdown, but never let it keep the process from exiting."""
    try:
        await asyncio.wait_for(step, timeout=SHUTDOWN_STEP_TIMEOUT)
    except TimeoutError:
        logger.warning("shutdown: %s did not finish within %.0fs; going on", what, SHUTDOWN_STEP_TIMEOUT)
