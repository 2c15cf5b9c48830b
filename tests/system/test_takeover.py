"""Fast takeover between worker processes: a dead worker's runs resume elsewhere before its lease expires; a live
worker keeps its runs."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.worker import APPLICATION_NAME_PREFIX
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.polling import wait_until
from tests.helpers.processes import WorkerProcess, Workers
from tests.helpers.sql import latest_run, task_state
from tests.helpers.workers import (
    count_events,
    effect_events,
    is_completed,
    open_gate,
    seen_event,
)

LONG_LEASE = 60
"""Seconds; longer than any wait of these tests, so a run that moved on did so by takeover, not by lease expiry."""


# -- worker processes -------------------------------------------------------------------------------------------


def _start(workers: Workers, dsn: str, queue: str, tmp_path: Path, **settings: Any) -> WorkerProcess:
    n = len(workers.started)
    if "id" in settings:  # unique per test: another session on the same server may run workers "a" and "b" too
        settings["id"] = f"{queue}-{settings['id']}"
    settings.setdefault("claim_timeout", LONG_LEASE)
    settings.setdefault("poll_interval", 0.1)
    settings.setdefault("health_log", tmp_path / f"health{n}.json")
    return workers.worker(dsn, queue, **settings)


async def _polls(w: WorkerProcess) -> int:
    return int(w.health().get("takeover_checks", 0))


async def _ready(w: WorkerProcess) -> bool:
    return bool(w.health().get("fast_takeover"))


@pytest.mark.crash
async def test_sigkill_another_worker_resumes_before_the_lease_would_expire(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    dsn = effects
    # Step s1 holds until the gate opens, so `a` is still inside it when it is killed, however slow `b` starts.
    spawned = await absurd_client.spawn("steps", {"steps": 4, "step_seconds": 0.1, "gate": "s1"}, queue=absurd_queue)
    task_id = spawned["task_id"]
    a = _start(workers, dsn, absurd_queue, tmp_path, id="a")
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s1", "start"))
    b = _start(workers, dsn, absurd_queue, tmp_path, id="b")
    await wait_until(lambda: _ready(b))
    a.send_signal(signal.SIGKILL)
    a.wait()
    await open_gate(dsn, absurd_queue, task_id, "s1")
    # The lease runs for 60 s (WAIT is 20 s): completing now proves the takeover.
    await wait_until(lambda: is_completed(absurd_client, task_id))
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None
    assert isinstance(snapshot.result, dict)
    assert snapshot.result["pid"] == b.pid
    events = await effect_events(dsn, absurd_queue, task_id)
    assert count_events(events, "s0", "start") == 1  # committed before the kill: never ran again
    assert count_events(events, "s1", "start") == 2  # in flight at the kill: ran again, once
    assert [count_events(events, f"s{i}", "end") for i in range(1, 4)] == [1, 1, 1]
    assert (await task_state(dsn, absurd_queue, task_id))["attempts"] == 1  # handed back, no attempt used
    assert f"took over task_id={task_id}" in b.output()


@pytest.mark.crash
async def test_a_paused_worker_keeps_its_task_while_peers_poll(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    dsn = effects
    pair = {name: _start(workers, dsn, absurd_queue, tmp_path, id=name) for name in ("a", "b")}
    for w in pair.values():
        await wait_until(lambda w=w: _ready(w))
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 2.0}, queue=absurd_queue)
    task_id = spawned["task_id"]
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    claimed_by = str((await latest_run(dsn, absurd_queue, task_id))["claimed_by"])
    name = claimed_by.removeprefix(takeover.CLAIM_PREFIX).split(":")[0].removeprefix(f"{absurd_queue}-")
    paused, peer = pair[name], pair["b" if name == "a" else "a"]
    paused.send_signal(signal.SIGSTOP)
    try:
        before = await _polls(peer)
        # The peer checks for dead workers at least three times (a second apart) while the other one is stopped.
        await wait_until(lambda: _polls_since(peer, before, 3))
        assert await latest_run(dsn, absurd_queue, task_id) == {"state": "running", "claimed_by": claimed_by}
        assert "took over" not in peer.output()
    finally:
        paused.send_signal(signal.SIGCONT)
    await wait_until(lambda: is_completed(absurd_client, task_id))
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None
    assert isinstance(snapshot.result, dict)
    assert snapshot.result["pid"] == paused.pid
    events = await effect_events(dsn, absurd_queue, task_id)
    assert [count_events(events, f"s{i}", "start") for i in range(2)] == [1, 1]  # nothing ran twice


async def _polls_since(w: WorkerProcess, before: int, n: int) -> bool:
    return await _polls(w) >= before + n


async def _terminate_lock_connection(dsn: str, worker_id: str, slot: int) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = %s",
            (f"{APPLICATION_NAME_PREFIX}{worker_id} lock{slot}",),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _lock_connections(dsn: str, worker_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pg_stat_activity where application_name like %s",
            (f"{APPLICATION_NAME_PREFIX}{worker_id} lock%",),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


@pytest.mark.crash
async def test_a_worker_that_lost_one_lock_connection_keeps_its_tasks(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    dsn = effects
    # A checks its lock connections only every second (poll_interval=2.0), so the peer polls while A is down to one lock.
    a = _start(workers, dsn, absurd_queue, tmp_path, id="a", poll_interval=2.0)
    await wait_until(lambda: _ready(a))
    # Step s0 holds until the gate opens, so the run is still A's however slowly B starts and polls.
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 0.1, "gate": "s0"}, queue=absurd_queue)
    task_id = spawned["task_id"]
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    b = _start(workers, dsn, absurd_queue, tmp_path, id="b")
    await wait_until(lambda: _ready(b))
    claimed_by = (await latest_run(dsn, absurd_queue, task_id))["claimed_by"]
    assert str(claimed_by).startswith(f"{takeover.CLAIM_PREFIX}{absurd_queue}-a:")
    assert await _terminate_lock_connection(dsn, f"{absurd_queue}-a", 0) == 1
    before = await _polls(b)
    await wait_until(lambda: _polls_since(b, before, 3))
    assert await latest_run(dsn, absurd_queue, task_id) == {"state": "running", "claimed_by": claimed_by}
    assert "took over" not in b.output()
    await wait_until(lambda: _lock_connections_are(dsn, f"{absurd_queue}-a", 2))  # reconnected and re-locked
    await open_gate(dsn, absurd_queue, task_id, "s0")
    await wait_until(lambda: is_completed(absurd_client, task_id))
    events = await effect_events(dsn, absurd_queue, task_id)
    assert [count_events(events, f"s{i}", "start") for i in range(2)] == [1, 1]
    assert {pid for _, event, pid in events if event != "open"} == {a.pid}  # the test opened the gate
    assert "liveness lock connection 0 holds the lock again" in a.output()


async def _lock_connections_are(dsn: str, worker_id: str, n: int) -> bool:
    return await _lock_connections(dsn, worker_id) == n
