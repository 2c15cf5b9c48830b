"""Worker tests with real worker subprocesses: SIGTERM drain and hand-back, dropped connections."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.worker import APPLICATION_NAME_PREFIX
from tests.helpers.apps.worker_app import EFFECTS_TABLE
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.processes import Workers
from tests.helpers.sql import runs, task_state
from tests.helpers.workers import count_events, effect_events, is_completed, seen_event

pytestmark = pytest.mark.crash


async def test_sigterm_hands_back_and_another_worker_resumes_at_once(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, workers: Workers
) -> None:
    dsn = effects
    spawned = await absurd_client.spawn("steps", {"steps": 4, "step_seconds": 1.0}, queue=absurd_queue)
    task_id = spawned["task_id"]
    # A long lease: the task can only move to worker B this soon because A hands it back.
    a = workers.worker(dsn, absurd_queue, claim_timeout=60, drain_timeout=0.3)
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    b = workers.worker(dsn, absurd_queue, claim_timeout=60)
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s2", "start"))  # s0, s1 committed
    a.send_signal(signal.SIGTERM)
    assert await a.wait_exit() == 0
    await wait_until(lambda: is_completed(absurd_client, task_id))

    events = await effect_events(dsn, absurd_queue, task_id)
    assert [count_events(events, f"s{i}", "start") for i in range(4)] == [1, 1, 2, 1]
    assert [count_events(events, f"s{i}", "end") for i in range(4)] == [1, 1, 1, 1]
    assert {pid for step, _, pid in events if step in ("s0", "s1")} == {a.pid}
    assert {pid for step, _, pid in events if step == "s3"} == {b.pid}
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None
    assert isinstance(snapshot.result, dict)
    assert snapshot.result["pid"] == b.pid
    rows = await runs(dsn, absurd_queue, task_id)
    assert [(r["attempt"], r["state"]) for r in rows] == [(1, "completed")]  # same run, no attempt used
    log = a.output()
    assert f"handed back task_id={task_id} task=steps attempt=1" in log
    assert f"claimed task_id={task_id} task=steps attempt=1" in b.output()


async def test_cli_worker_sigterm_lets_in_flight_tasks_finish_within_the_drain(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, workers: Workers
) -> None:
    dsn = effects
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 0.5}, queue=absurd_queue)
    cli = [sys.executable, "-m", "pydantic_ai_absurd.cli", "worker", "tests.helpers.apps.worker_app:absurd"]
    cli += ["--concurrency", "2", "--claim-timeout", "10", "--drain-timeout", str(WAIT), "--poll-interval", "0.1"]
    a = workers.worker(dsn, absurd_queue, command=cli)
    await wait_until(lambda: seen_event(dsn, absurd_queue, spawned["task_id"], "s0", "start"))
    a.send_signal(signal.SIGTERM)
    later = await absurd_client.spawn("steps", {"steps": 1, "step_seconds": 0}, queue=absurd_queue)
    assert await a.wait_exit() == 0
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.state == "completed"
    assert (await task_state(dsn, absurd_queue, later["task_id"]))["state"] == "pending"  # never claimed
    assert "handed back" not in a.output()
    assert "concurrency=2 claim_timeout=10s" in a.output()


async def test_cli_worker_queue_option_runs_the_tasks_of_that_queue(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, workers: Workers
) -> None:
    from pydantic_ai_absurd.schema import create_queue_sync, drop_queue_sync

    dsn = effects
    other = f"other_{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(create_queue_sync, dsn, other)
    try:
        spawner = AsyncAbsurd(dsn, queue_name=other)
        try:
            spawned = await spawner.spawn("steps", {"steps": 1, "step_seconds": 0}, queue=other)
            # The worker's client is bound to absurd_queue; `--queue` makes it work (and execute on) `other`.
            cli = [sys.executable, "-m", "pydantic_ai_absurd.cli", "worker", "tests.helpers.apps.worker_app:absurd"]
            cli += ["--queue", other, "--poll-interval", "0.1", "--no-fast-takeover"]
            w = workers.worker(dsn, absurd_queue, command=cli)
            await wait_until(lambda: is_completed(spawner, spawned["task_id"]))
            assert (await task_state(dsn, other, spawned["task_id"]))["attempts"] == 1
            w.send_signal(signal.SIGTERM)
            assert await w.wait_exit() == 0
            assert f"on queue {other}" in w.output()
            assert "fast takeover" not in w.output()
        finally:
            await spawner.close()
    finally:
        await asyncio.to_thread(drop_queue_sync, dsn, other)


async def _kill_worker_backends(dsn: str, worker_id: str) -> int:
    """Terminate every connection of the worker `worker_id` (only its own: other sessions may share the server)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name like %s",
            (f"{APPLICATION_NAME_PREFIX}{worker_id}%",),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_worker_survives_killed_connections(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, workers: Workers
) -> None:
    dsn = effects
    spawned = await absurd_client.spawn("steps", {"steps": 3, "step_seconds": 0.5}, queue=absurd_queue)
    task_id = spawned["task_id"]
    w = workers.worker(dsn, absurd_queue, claim_timeout=5, id=absurd_queue)
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s1", "start"))
    assert await _kill_worker_backends(dsn, absurd_queue) >= 1  # mid-step: the task's, the claimer's, the heartbeat's
    await wait_until(lambda: is_completed(absurd_client, task_id))
    events = await effect_events(dsn, absurd_queue, task_id)
    assert count_events(events, "s0", "start") == 1  # a committed step never runs again
    assert [count_events(events, f"s{i}", "end") >= 1 for i in range(3)] == [True, True, True]

    # Idle connections killed too: the worker reconnects and takes new work.
    assert await _kill_worker_backends(dsn, absurd_queue) >= 1
    second = await absurd_client.spawn("steps", {"steps": 1, "step_seconds": 0}, queue=absurd_queue)
    await wait_until(lambda: is_completed(absurd_client, second["task_id"]))
    for tid in (task_id, second["task_id"]):
        assert all(r["state"] != "running" for r in await runs(dsn, absurd_queue, tid))
    assert (await task_state(dsn, absurd_queue, task_id))["attempts"] == 1  # handed back, not failed
    w.send_signal(signal.SIGTERM)
    assert await w.wait_exit() == 0


async def test_worker_survives_a_postgres_restart(workers: Workers) -> None:
    from pydantic_ai_absurd.embedded import EmbeddedPostgres, default_embedded_dir
    from pydantic_ai_absurd.schema import setup

    # A server of our own: the shared test server is never restarted.
    # A directory of its own per run: two pytest sessions at once must not share (and restart) it.
    server = EmbeddedPostgres(default_embedded_dir(f"worker-restart-test-{uuid.uuid4().hex[:12]}"))
    queue = "restart"
    try:
        dsn = await asyncio.to_thread(server.start)
        await setup(dsn, queues=[queue])
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(EFFECTS_TABLE)
        client = AsyncAbsurd(dsn, queue_name=queue)
        spawned = await client.spawn("steps", {"steps": 3, "step_seconds": 0.5}, queue=queue)
        task_id = spawned["task_id"]
        await client.close()
        w = workers.worker(dsn, queue, claim_timeout=5)
        await wait_until(lambda: seen_event(dsn, queue, task_id, "s1", "start"))
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)

        client = AsyncAbsurd(dsn, queue_name=queue)
        try:
            await wait_until(lambda: is_completed(client, task_id), timeout=2 * WAIT)
            later = await client.spawn("steps", {"steps": 1, "step_seconds": 0}, queue=queue)
            await wait_until(lambda: is_completed(client, later["task_id"]))
        finally:
            await client.close()
        events = await effect_events(dsn, queue, task_id)
        assert count_events(events, "s0", "start") == 1  # committed before the restart: never ran again
        for tid in (task_id, later["task_id"]):
            assert all(r["state"] != "running" for r in await runs(dsn, queue, tid))
        w.send_signal(signal.SIGTERM)
        assert await w.wait_exit() == 0
        assert "cannot claim from queue" in w.output() or "reconnected" in w.output() or "handed back" in w.output()
    finally:
        await asyncio.to_thread(server.destroy)
