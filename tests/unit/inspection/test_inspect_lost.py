"""`inspect` tells the truth about crashes: lost executions, the steps that ran again, failure tracebacks."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd import inspect_task
from pydantic_ai_absurd.inspection._render import render_timeline
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import run_until_done
from tests.helpers.apps.worker_app import EFFECTS_TABLE
from tests.helpers.polling import wait_until
from tests.helpers.workers import (
    WorkerProcess,
    count_events,
    effect_events,
    is_completed,
    open_gate,
    running_worker,
    seen_event,
)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.close()


@pytest.fixture
def effects(absurd_dsn: str) -> str:
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    return absurd_dsn


def _start(workers: list[WorkerProcess], dsn: str, queue: str, tmp_path: Path, name: str) -> WorkerProcess:
    w = WorkerProcess(
        dsn, queue, tmp_path / f"{name}.log", id=name, claim_timeout=60, poll_interval=0.1,
        health_log=tmp_path / f"{name}.json",
    )  # fmt: skip
    workers.append(w)
    return w


async def _ready(w: WorkerProcess) -> bool:
    return bool(w.health().get("fast_takeover"))


@pytest.mark.crash
async def test_a_sigkilled_worker_shows_as_a_lost_execution(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: list[WorkerProcess]
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
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
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


async def _wait_for_database_clock(dsn: str, moment: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute("select absurd.current_time()")).fetchone()
            assert row is not None
            if row[0] >= moment:
                return
            await asyncio.sleep(0.05)


async def test_an_expired_lease_shows_as_a_lost_execution(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    @absurd_client.register_task(name="two_steps")
    async def two_steps(params: Any, ctx: AsyncTaskContext) -> str:
        async def step() -> str:
            return "ok"

        await ctx.step("first", step)
        return "done"

    spawned = await absurd_client.spawn("two_steps", None)
    [claimed] = await absurd_client.claim_tasks(claim_timeout=1, worker_id="vanished-host")
    claimed_at = (await inspect_task(absurd_client, spawned["task_id"])).attempts[0].started_at
    assert claimed_at is not None
    await _wait_for_database_clock(absurd_dsn, claimed_at + timedelta(seconds=1.5))
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "completed"

    timeline = await inspect_task(absurd_client, spawned["task_id"])
    (lost,) = timeline.lost_executions
    assert (lost.how, lost.attempt, lost.worker) == ("lease_expired", claimed["attempt"], "vanished-host")
    assert [timeline.steps[index - 1].name for index in lost.reran] == ["first"]
    assert "lease expired" in render_timeline(timeline)


async def test_the_traceback_of_a_failed_attempt_is_shown(absurd_client: AsyncAbsurd) -> None:
    @absurd_client.register_task(name="broken", default_max_attempts=1)
    async def broken(params: Any, ctx: AsyncTaskContext) -> str:
        raise ValueError("the invoice total is negative")

    spawned = await absurd_client.spawn("broken", None)
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "failed"
    text = render_timeline(await inspect_task(absurd_client, spawned["task_id"]))
    assert "ValueError: the invoice total is negative" in text
    assert "Traceback (most recent call last):" in text
    assert 'raise ValueError("the invoice total is negative")' in text
    assert all(len(line) <= 100 for line in text.splitlines())


async def test_a_takeover_whose_record_fails_still_hands_the_run_back(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic_ai_absurd import _worker_records

    monkeypatch.setattr(_worker_records, "_LOST", "pydantic_ai_absurd.migrations")  # exists, other columns

    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    spawned = await absurd_client.spawn("hello", None)
    ghost = f"{takeover.CLAIM_PREFIX}ghost:1:deadbeef"  # a worker of ours whose lock nobody holds: dead
    await absurd_client.claim_tasks(claim_timeout=60, worker_id=ghost)
    async with running_worker(absurd_client) as worker:
        await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
        assert worker.health.taken_over == 1
    assert "cannot record the lost executions of a takeover" in caplog.text
    monkeypatch.undo()
    assert (await inspect_task(absurd_client, spawned["task_id"])).lost_executions == ()
