"""`inspect` after a SIGKILLed worker process: the lost execution and the steps that ran again."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd import inspect_task
from pydantic_ai_absurd.inspection._render import render_timeline
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.polling import wait_until
from tests.helpers.processes import WorkerProcess, Workers
from tests.helpers.workers import (
    count_events,
    effect_events,
    is_completed,
    open_gate,
    seen_event,
)


def _start(workers: Workers, dsn: str, queue: str, tmp_path: Path, name: str) -> WorkerProcess:
    return workers.worker(
        dsn, queue, log=name, id=name, claim_timeout=60, poll_interval=0.1, health_log=tmp_path / f"{name}.json"
    )


async def _ready(w: WorkerProcess) -> bool:
    return bool(w.health().get("fast_takeover"))


@pytest.mark.crash
async def test_a_sigkilled_worker_shows_as_a_lost_execution(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    dsn = effects
    # Step s1 holds until the gate opens: `a` is inside it when it is killed, however slowly `b` starts.
    params = {"steps": 3, "step_seconds": 0.1, "gate": "s1"}
    spawned = await absurd_client.spawn("steps", params, queue=absurd_queue)
    task_id = spawned["task_id"]
    a = _start(workers, dsn, absurd_queue, tmp_path, "a")
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s1", "start"))
    b = _start(workers, dsn, absurd_queue, tmp_path, "b")
    await wait_until(lambda: _ready(b))
    a.send_signal(signal.SIGKILL)
    a.wait()
    await open_gate(dsn, absurd_queue, task_id, "s1")
    await wait_until(lambda: is_completed(absurd_client, task_id))

    timeline = await inspect_task(absurd_client, task_id)
    assert len(timeline.attempts) == 1  # taken over without using an attempt
    (lost,) = timeline.lost_executions
    assert lost.how == "worker_died" and lost.attempt == 1
    assert lost.worker is not None and lost.worker.startswith(f"{takeover.CLAIM_PREFIX}a:")
    assert lost.taken_over_by is not None and lost.taken_over_by.startswith(f"{takeover.CLAIM_PREFIX}b:")
    assert lost.lost_at is not None and lost.claimed_at is not None and lost.claimed_at < lost.lost_at
    events = await effect_events(dsn, absurd_queue, task_id)
    twice = [f"s{i}" for i in range(3) if count_events(events, f"s{i}", "start") == 2]
    assert twice == ["s1"]  # the step in flight at the kill; s0 had committed
    by_index = {step.index: step.name for step in timeline.steps}
    assert [by_index[index] for index in lost.reran] == twice
    text = render_timeline(timeline)
    assert "Lost executions (1)" in text
    assert "worker died" in text and lost.worker in text and "taken over at" in text
    assert f"ran again (in flight when it died): {lost.reran[0]} {twice[0]}" in text
    assert timeline.to_json()["lost_executions"][0]["reran"] == list(lost.reran)
