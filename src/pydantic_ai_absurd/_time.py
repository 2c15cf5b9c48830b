"""Replay-stable time inside a durable run: the run's start time and the agent graph's sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from ._execution import RunScope, require_task_context
from ._naming import escape
from ._steps import run_body, run_step


def _now() -> datetime:
    return datetime.now(UTC)


async def _recorded_time(step: str, compute: Callable[[], datetime]) -> datetime:
    async def body() -> str:
        return compute().isoformat()

    outcome = await run_step(step, body)
    return datetime.fromisoformat(str(outcome.value))


async def run_start_time(agent_name: str, run_id: str) -> datetime:
    """When the run with `run_id` first started, recorded in the step `<agent>__run.start_time@<run id>`."""
    return await _recorded_time(f"{agent_name}__run.start_time@{escape(run_id)}", _now)


def checkpointed_sleep(scope: RunScope) -> Callable[[float], Awaitable[None]]:
    """An agent-graph sleep whose wake time is a checkpoint, so a resumed run sleeps only what is left.

    It sleeps in process under the lease keeper rather than suspending the task: Pydantic AI cancels a
    provider's background job when its poll sleep raises, and Absurd's `sleep_for` raises to suspend.
    """

    async def sleep(delay: float) -> None:
        wake_at = await _recorded_time(
            f"{scope.prefix}__graph.sleep", lambda: _now() + timedelta(seconds=max(delay, 0.0))
        )
        remaining = (wake_at - _now()).total_seconds()
        if remaining > 0:
            await run_body(require_task_context(), lambda: asyncio.sleep(remaining))

    return sleep
