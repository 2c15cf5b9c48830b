"""Replay-stable time inside a durable run: the run's start time, the agent graph's sleeps, suspensions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from absurd_sdk import AsyncTaskContext

from ._absurd import suspend_run_until
from ._execution import execution_state, remember_end, require_task_context
from ._step_names import GraphSleep, RunStartTime, StepName
from ._steps import refuse_live, run_body, run_step

DEFAULT_SUSPEND_THRESHOLD = 5.0
"""Waits of at least this many seconds suspend the task in Postgres; shorter ones sleep in the worker."""


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


async def recorded_time(step: str, compute: Callable[[], datetime]) -> datetime:
    """The time `compute()` gives on the first run, recorded in the step `step`."""

    async def body() -> str:
        return compute().isoformat()

    outcome = await run_step(step, body)
    return datetime.fromisoformat(str(outcome.value))


async def run_start_time(agent_name: str, run_id: str) -> datetime:
    """When the run with `run_id` first started, recorded in the step `<agent>__run.start_time@<run id>`."""
    return await recorded_time(StepName(RunStartTime(run_id), agent_name).format(), now)


async def graph_sleep(agent_name: str, ordinal: int, delay: float, *, suspend_threshold: float) -> None:
    """The agent graph's sleep (between polls of a provider's background job, or before a model retry).

    The wake time is recorded in the step `<agent>[~<ordinal>]__graph.sleep`, so a resumed run waits only what is left.
    When at least `suspend_threshold` seconds are left, the task is suspended in Postgres until then (no worker
    slot held; Pydantic AI leaves a background job running, Absurd's `SuspendTask` being the engine's control-flow
    error); a shorter wait sleeps in the worker under the lease keeper. One step either way, so the step names of
    a run do not depend on how long a resume took.
    """
    step = StepName(GraphSleep(), agent_name, ordinal).format()
    wake_at = await recorded_time(step, lambda: now() + timedelta(seconds=max(delay, 0.0)))
    await sleep_until(require_task_context(), wake_at, suspend_threshold=suspend_threshold)


async def sleep_until(task_ctx: AsyncTaskContext, wake_at: datetime, *, suspend_threshold: float | None) -> None:
    """Wait until `wake_at`: in the worker under the lease keeper, or suspended when at least `suspend_threshold` away.

    A suspension makes the run claimable again at `wake_at` and raises Absurd's `SuspendTask`; it writes no
    checkpoint, so the code before it runs again when the task resumes.
    """
    remaining = (wake_at - now()).total_seconds()
    if remaining <= 0:
        return
    if suspend_threshold is not None and remaining >= suspend_threshold:
        execution_state(task_ctx).raise_if_ended()
        refuse_live(None)
        await remember_end(task_ctx, suspend_run_until(task_ctx, wake_at))
        return
    await run_body(task_ctx, lambda: asyncio.sleep(remaining))
