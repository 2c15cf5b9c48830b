"""In-process tests of `run_worker` / `Worker` against a real Postgres."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd.worker import Worker, WorkerConfig, WorkerHealth
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.sql import runs, task_state
from tests.helpers.workers import running_worker


async def _state(absurd: AsyncAbsurd, task_id: str) -> str | None:
    snapshot = await absurd.fetch_task_result(task_id)
    return None if snapshot is None else snapshot.state


async def test_slot_refill_one_slow_task_does_not_block_claims(absurd_client: AsyncAbsurd) -> None:
    release = asyncio.Event()
    done: list[int] = []

    @absurd_client.register_task(name="slow")
    async def slow(params: Any, ctx: AsyncTaskContext) -> str:
        await asyncio.wait_for(release.wait(), WAIT)
        return "slow"

    @absurd_client.register_task(name="fast")
    async def fast(params: int, ctx: AsyncTaskContext) -> int:
        done.append(params)
        return params

    slow_task = await absurd_client.spawn("slow", None)
    fast_tasks = [await absurd_client.spawn("fast", i) for i in range(6)]
    async with running_worker(absurd_client, concurrency=2) as worker:
        # Six fast tasks go through the one free slot while the slow one holds the other slot.
        for spawned in fast_tasks:
            await wait_until(lambda s=spawned: _completed(absurd_client, s["task_id"]))
        assert await _state(absurd_client, slow_task["task_id"]) == "running"
        release.set()
        await wait_until(lambda: _completed(absurd_client, slow_task["task_id"]))
        assert sorted(done) == list(range(6))
        assert worker.health.completed == 7


async def _completed(absurd: AsyncAbsurd, task_id: str) -> bool:
    return await _state(absurd, task_id) == "completed"


async def test_worker_heartbeat_keeps_a_short_lease_alive(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    """A handler busy for 3 claim timeouts outside any step keeps its claim while other claimers poll."""
    calls: list[int] = []

    @absurd_client.register_task(name="busy")
    async def busy(params: Any, ctx: AsyncTaskContext) -> str:
        calls.append(1)
        await asyncio.sleep(2.5)
        return "ok"

    spawned = await absurd_client.spawn("busy", None)
    async with running_worker(absurd_client, claim_timeout=1, concurrency=1):
        await wait_until(lambda: _at_least(calls, 1))
        other = AsyncAbsurd(absurd_dsn, queue_name=_queue(absurd_client))
        try:
            # Another worker keeps polling: it would fail the run with $ClaimTimeout if the lease expired.
            async def claimed_by_other() -> bool:
                assert await other.claim_tasks(claim_timeout=1, worker_id="other") == []
                return await _completed(absurd_client, spawned["task_id"])

            await wait_until(claimed_by_other, interval=0.2)
        finally:
            await other.close()
    assert calls == [1]
    assert [r["state"] for r in await runs(absurd_dsn, _queue(absurd_client), spawned["task_id"])] == ["completed"]


def _queue(absurd: AsyncAbsurd) -> str:
    return absurd._queue_name  # pyright: ignore[reportPrivateUsage]


async def test_cancel_is_noticed_by_the_heartbeat_between_steps(absurd_client: AsyncAbsurd) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @absurd_client.register_task(name="long")
    async def long(params: Any, ctx: AsyncTaskContext) -> str:
        started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    spawned = await absurd_client.spawn("long", None)
    async with running_worker(absurd_client, claim_timeout=1, concurrency=1) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        await absurd_client.cancel_task(spawned["task_id"])
        await asyncio.wait_for(cancelled.wait(), WAIT)
        await wait_until(lambda: _no_in_flight(worker.health))
    assert await _state(absurd_client, spawned["task_id"]) == "cancelled"


async def _no_in_flight(health: WorkerHealth) -> bool:
    return health.in_flight == 0


async def test_stop_drains_in_flight_tasks_and_claims_no_more(absurd_client: AsyncAbsurd) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @absurd_client.register_task(name="work")
    async def work(params: Any, ctx: AsyncTaskContext) -> int:
        started.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return 1

    first = await absurd_client.spawn("work", None)
    async with running_worker(absurd_client, concurrency=1, drain_timeout=WAIT) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        second = await absurd_client.spawn("work", None)
        worker.request_stop()
        assert worker.health.stopping
        assert not worker.health.ready
        release.set()
    assert await _state(absurd_client, first["task_id"]) == "completed"
    assert await _state(absurd_client, second["task_id"]) == "pending"


async def test_drain_timeout_hands_back_without_using_an_attempt(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    started = asyncio.Event()
    effects: list[str] = []
    sleep = {"seconds": WAIT}

    @absurd_client.register_task(name="two_steps")
    async def two_steps(params: Any, ctx: AsyncTaskContext) -> str:
        async def first() -> str:
            effects.append("first")
            return "a"

        async def second() -> str:
            effects.append("second-start")
            started.set()
            await asyncio.sleep(sleep["seconds"])
            effects.append("second-end")
            return "b"

        return await ctx.step("first", first) + await ctx.step("second", second)

    spawned = await absurd_client.spawn("two_steps", None)
    async with running_worker(absurd_client, concurrency=1, drain_timeout=0.2) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
    assert worker.health.handed_back == 1
    rows = await runs(absurd_dsn, _queue(absurd_client), spawned["task_id"])
    assert [(r["attempt"], r["state"]) for r in rows] == [(1, "sleeping")]  # claimable now, same run
    assert rows[0]["available_at"] <= rows[0]["now"]
    assert effects == ["first", "second-start"]

    # Another worker resumes at once: the finished step replays, the interrupted one runs again.
    await absurd_client.spawn("two_steps", None)  # a second task to show normal work continues
    sleep["seconds"] = 0
    effects.clear()
    started.clear()
    snapshot = None
    async with running_worker(absurd_client, concurrency=2):
        await wait_until(lambda: _completed(absurd_client, spawned["task_id"]))
        snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.result == "ab"
    assert "first" in effects  # the new task's first step
    assert effects.count("first") == 1  # ...and only that one: the resumed task replayed its own
    state = await task_state(absurd_dsn, _queue(absurd_client), spawned["task_id"])
    assert state["attempts"] == 1


async def test_on_poll_and_health_file(absurd_client: AsyncAbsurd, tmp_path: Path) -> None:
    health_file = tmp_path / "worker.health"
    polls: list[float] = []
    async with running_worker(
        absurd_client,
        health_file=health_file,
        on_poll=lambda h: polls.append(h.last_poll),  # pyright: ignore
    ) as worker:
        await wait_until(lambda: _exists(health_file))
        await wait_until(lambda: _at_least(polls, 2))
        assert worker.health.ready
        assert worker.health.is_alive()
    assert not health_file.exists()
    assert not worker.health.ready


async def _exists(path: Path) -> bool:
    return path.exists()  # noqa: ASYNC240


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_logs_claim_and_completion_with_task_id_name_attempt(
    absurd_client: AsyncAbsurd, caplog: pytest.LogCaptureFixture
) -> None:
    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    spawned = await absurd_client.spawn("hello", None)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(absurd_client):
            await wait_until(lambda: _completed(absurd_client, spawned["task_id"]))
    expected = f"task_id={spawned['task_id']} task=hello attempt=1"
    messages = [r.getMessage() for r in caplog.records if r.name == "pydantic_ai_absurd.worker"]
    assert any(m.startswith("claimed ") and expected in m for m in messages)
    assert any(m.startswith("completed ") and expected in m for m in messages)


async def test_missing_queue_fails_fast(absurd_dsn: str) -> None:
    from pydantic_ai_absurd.errors import QueueNotFoundError

    client = AsyncAbsurd(absurd_dsn, queue_name="no_such_queue_for_worker")
    try:
        worker = Worker(client, WorkerConfig(handle_signals=False))
        with pytest.raises(QueueNotFoundError, match="no_such_queue_for_worker"):
            await asyncio.wait_for(worker.run(), WAIT)
    finally:
        await client.close()


def test_cli_reports_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    from pydantic_ai_absurd.cli import main

    assert main(["worker", "no_such_module_xyz:absurd"]) == 2
    assert "Cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["worker", "tests.helpers.polling:WAIT"]) == 2
    assert "is a float, not an absurd_sdk.AsyncAbsurd" in capsys.readouterr().err
    assert main(["worker", "missing-colon"]) == 2
    assert "is not MODULE:ATTRIBUTE" in capsys.readouterr().err
