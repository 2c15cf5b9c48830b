"""Waiting on conditions, never on time: the one polling loop of the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from absurd_sdk import AsyncAbsurd, TaskResultSnapshot

WAIT = 20.0
"""Generous bound (seconds) for anything the tests wait for; never a performance assertion."""

FIRST_PAUSE = 0.001
"""Seconds `wait_until` waits after its first check; each later pause doubles, up to its `interval`."""

TERMINAL = frozenset({"completed", "failed", "cancelled"})
"""Task states a task never leaves."""


async def wait_until(
    condition: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float = WAIT,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll `condition` (plain or async) until it returns a truthy value, and return that value.

    The pauses between checks start at 1 ms and double up to `interval`: most conditions of the unit tests
    hold within a few milliseconds. Fails after `timeout` seconds with `message` (or the condition's name);
    a condition may also assert.
    """
    deadline = time.monotonic() + timeout
    pause = min(FIRST_PAUSE, interval)
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"condition not met within {timeout} s: {condition}")
        await asyncio.sleep(pause)
        pause = min(pause * 2, interval)


def wait_until_sync(
    condition: Callable[[], Any], timeout: float = WAIT, *, interval: float = 0.02, message: str | None = None
) -> Any:
    """`wait_until` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)
    return value


async def wait_terminal(absurd: AsyncAbsurd, task_id: str, timeout: float = WAIT) -> TaskResultSnapshot:
    """The task's result once it is terminal (some worker, in- or out-of-process, is running it)."""

    async def terminal() -> TaskResultSnapshot | None:
        snapshot = await absurd.fetch_task_result(task_id)
        return snapshot if snapshot is not None and snapshot.state in TERMINAL else None

    return await wait_until(terminal, timeout, message=f"task {task_id} did not finish within {timeout} s")
