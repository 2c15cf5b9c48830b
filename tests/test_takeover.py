"""Fast takeover: a dead worker's runs resume elsewhere before its lease expires; a live worker keeps its runs."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql

from pydantic_ai_absurd.worker import APPLICATION_NAME_PREFIX, Worker
from pydantic_ai_absurd.worker import _liveness_rows as liveness_rows  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]

from .worker_app import EFFECTS_TABLE
from .worker_support import (
    WAIT,
    WorkerProcess,
    count_events,
    effect_events,
    eventually,
    is_completed,
    open_gate,
    running_worker,
    runs,
    seen_event,
    task_state,
)

LONG_LEASE = 60
"""Seconds; longer than any wait of these tests, so a run that moved on did so by takeover, not by lease expiry."""


async def _run_row(dsn: str, queue: str, task_id: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("select state, claimed_by from absurd.{} where task_id = %s order by attempt desc limit 1").format(
                sql.Identifier(f"r_{queue}")
            ),
            (task_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return {"state": row[0], "claimed_by": row[1]}


# -- in-process -------------------------------------------------------------------------------------------------


async def test_a_run_of_a_dead_worker_is_handed_back_and_resumed_before_its_lease_expires(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    spawned = await absurd_client.spawn("hello", None)
    ghost = f"{takeover.CLAIM_PREFIX}ghost:1:deadbeef"  # a worker of ours whose lock nobody holds: dead
    [claimed] = await absurd_client.claim_tasks(claim_timeout=LONG_LEASE, worker_id=ghost)
    assert claimed["task_id"] == spawned["task_id"]
    async with running_worker(absurd_client) as worker:
        await eventually(lambda: is_completed(absurd_client, spawned["task_id"]))
        assert worker.health.taken_over == 1
        assert worker.health.fast_takeover
    assert (await task_state(absurd_dsn, absurd_queue, spawned["task_id"]))["attempts"] == 1  # no attempt used


async def test_a_run_claimed_by_another_kind_of_worker_is_never_handed_back(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    spawned = await absurd_client.spawn("not_registered_here", None, queue=absurd_queue)
    await absurd_client.claim_tasks(claim_timeout=LONG_LEASE, worker_id="plain-absurd-worker")
    async with running_worker(absurd_client) as worker:
        await eventually(lambda: _checks_at_least(worker, 4))
        assert worker.health.taken_over == 0
    row = await _run_row(absurd_dsn, absurd_queue, spawned["task_id"])
    assert row == {"state": "running", "claimed_by": "plain-absurd-worker"}


async def _checks_at_least(worker: Worker, n: int) -> bool:
    return worker.health.takeover_checks >= n


async def test_a_worker_marks_its_claims_and_holds_its_lock_on_two_connections(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @absurd_client.register_task(name="wait")
    async def wait(params: Any, ctx: AsyncTaskContext) -> str:
        started.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return "ok"

    spawned = await absurd_client.spawn("wait", None)
    async with running_worker(absurd_client, worker_id="marks") as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        row = await _run_row(absurd_dsn, absurd_queue, spawned["task_id"])
        assert row["claimed_by"] == worker.claim_id
        assert worker.claim_id.startswith(f"{takeover.CLAIM_PREFIX}marks:")
        assert await _lock_holders(absurd_dsn, worker.claim_id) == takeover.LOCK_CONNECTIONS == 2
        release.set()
        await eventually(lambda: is_completed(absurd_client, spawned["task_id"]))
    assert await _lock_holders(absurd_dsn, worker.claim_id) == 0  # released on stop


async def _lock_holders(dsn: str, identity: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(distinct pid) from pg_locks where locktype = 'advisory' and granted and objsubid = 1"
            " and ((classid::int8 << 32) | objid::int8) = hashtextextended(%s, 0)",
            (identity,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_connection_not_proven_direct_uses_a_liveness_row_with_one_log_line(
    absurd_client: AsyncAbsurd,
    absurd_dsn: str,
    absurd_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def pooled(conn: psycopg.AsyncConnection[Any]) -> bool:
        return False  # what a transaction-mode pooler looks like: the socket's ends are not the backend's

    monkeypatch.setattr(takeover, "is_direct_session", pooled)

    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    spawned = await absurd_client.spawn("hello", None)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(absurd_client, worker_id="pooled") as worker:
            await eventually(lambda: is_completed(absurd_client, spawned["task_id"]))
            assert worker.health.fast_takeover
            assert worker.claim_id.startswith(liveness_rows.ROW_CLAIM_PREFIX)
    lines = [r.getMessage() for r in caplog.records if "fast takeover" in r.getMessage()]
    assert len(lines) == 1
    assert "by liveness row" in lines[0] and "PgBouncer" in lines[0]
    rows = await runs(absurd_dsn, absurd_queue, spawned["task_id"])
    assert len(rows) == 1
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("select claimed_by from absurd.{} where task_id = %s").format(sql.Identifier(f"r_{absurd_queue}")),
            (spawned["task_id"],),
        )
        row = await cur.fetchone()
    assert row is not None
    assert row[0] is None or str(row[0]).startswith(liveness_rows.ROW_CLAIM_PREFIX)  # never the lock identity


# -- worker processes -------------------------------------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGCONT)
        w.close()


@pytest.fixture
def effects(absurd_dsn: str) -> str:
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    return absurd_dsn


def _start(workers: list[WorkerProcess], dsn: str, queue: str, tmp_path: Path, **settings: Any) -> WorkerProcess:
    n = len(workers)
    if "id" in settings:  # unique per test: another session on the same server may run workers "a" and "b" too
        settings["id"] = f"{queue}-{settings['id']}"
    settings.setdefault("claim_timeout", LONG_LEASE)
    settings.setdefault("poll_interval", 0.1)
    settings.setdefault("health_log", tmp_path / f"health{n}.json")
    w = WorkerProcess(dsn, queue, tmp_path / f"worker{n}.log", **settings)
    workers.append(w)
    return w


async def _polls(w: WorkerProcess) -> int:
    return int(w.health().get("takeover_checks", 0))


async def _ready(w: WorkerProcess) -> bool:
    return bool(w.health().get("fast_takeover"))


@pytest.mark.crash
async def test_sigkill_another_worker_resumes_before_the_lease_would_expire(
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    dsn = effects
    # Step s1 holds until the gate opens, so `a` is still inside it when it is killed, however slow `b` starts.
    spawned = await absurd_client.spawn("steps", {"steps": 4, "step_seconds": 0.1, "gate": "s1"}, queue=absurd_queue)
    task_id = spawned["task_id"]
    a = _start(workers, dsn, absurd_queue, tmp_path, id="a")
    await eventually(lambda: seen_event(dsn, absurd_queue, task_id, "s1", "start"))
    b = _start(workers, dsn, absurd_queue, tmp_path, id="b")
    await eventually(lambda: _ready(b))
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    await open_gate(dsn, absurd_queue, task_id, "s1")
    # The lease runs for 60 s (WAIT is 20 s): completing now proves the takeover.
    await eventually(lambda: is_completed(absurd_client, task_id))
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
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    dsn = effects
    pair = {name: _start(workers, dsn, absurd_queue, tmp_path, id=name) for name in ("a", "b")}
    for w in pair.values():
        await eventually(lambda w=w: _ready(w))
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 2.0}, queue=absurd_queue)
    task_id = spawned["task_id"]
    await eventually(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    claimed_by = str((await _run_row(dsn, absurd_queue, task_id))["claimed_by"])
    name = claimed_by.removeprefix(takeover.CLAIM_PREFIX).split(":")[0].removeprefix(f"{absurd_queue}-")
    paused, peer = pair[name], pair["b" if name == "a" else "a"]
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        before = await _polls(peer)
        # The peer checks for dead workers at least three times (0.1 s apart) while the other one is stopped.
        await eventually(lambda: _polls_since(peer, before, 3))
        assert await _run_row(dsn, absurd_queue, task_id) == {"state": "running", "claimed_by": claimed_by}
        assert "took over" not in peer.output()
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: is_completed(absurd_client, task_id))
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
    absurd_client: AsyncAbsurd, effects: str, absurd_queue: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    dsn = effects
    # A checks its lock connections only every 2 s, so the peer polls while A is down to one lock.
    a = _start(workers, dsn, absurd_queue, tmp_path, id="a", poll_interval=2.0)
    await eventually(lambda: _ready(a))
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 2.0}, queue=absurd_queue)
    task_id = spawned["task_id"]
    await eventually(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    b = _start(workers, dsn, absurd_queue, tmp_path, id="b")
    await eventually(lambda: _ready(b))
    claimed_by = (await _run_row(dsn, absurd_queue, task_id))["claimed_by"]
    assert str(claimed_by).startswith(f"{takeover.CLAIM_PREFIX}{absurd_queue}-a:")
    assert await _terminate_lock_connection(dsn, f"{absurd_queue}-a", 0) == 1
    before = await _polls(b)
    await eventually(lambda: _polls_since(b, before, 3))
    assert await _run_row(dsn, absurd_queue, task_id) == {"state": "running", "claimed_by": claimed_by}
    assert "took over" not in b.output()
    await eventually(lambda: _lock_connections_are(dsn, f"{absurd_queue}-a", 2))  # reconnected and re-locked
    await eventually(lambda: is_completed(absurd_client, task_id))
    events = await effect_events(dsn, absurd_queue, task_id)
    assert [count_events(events, f"s{i}", "start") for i in range(2)] == [1, 1]
    assert {pid for _, _, pid in events} == {a.pid}
    assert "liveness lock connection 0 holds the lock again" in a.output()


async def _lock_connections_are(dsn: str, worker_id: str, n: int) -> bool:
    return await _lock_connections(dsn, worker_id) == n
