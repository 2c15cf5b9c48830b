"""Signal handlers and event helpers of the worker loop."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable

__all__ = ["install_signal_handlers", "wait_any"]


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
