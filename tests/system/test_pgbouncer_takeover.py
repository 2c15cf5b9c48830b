"""Workers behind a real PgBouncer in transaction pooling: liveness rows, fast takeover, never a live worker's run."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql

from pydantic_ai_absurd._absurd import hand_back_runs_of_stale_workers  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd._db import connect_async  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker import _handback as handback  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker import _liveness_rows as rows  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.polling import wait_until
from tests.helpers.processes import WorkerProcess, Workers
from tests.helpers.sql import latest_run, task_state
from tests.helpers.workers import (
    count_events,
    effect_events,
    is_completed,
    open_gate,
    running_worker,
    seen_event,
)

LONG_LEASE = 60
"""Seconds; longer than any wait here, so a run that moved on did so by takeover, not by lease expiry."""

LIVENESS = "pydantic_ai_absurd.worker_liveness"


async def _fetch(dsn: str, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query if isinstance(query, sql.Composable) else sql.SQL(query), params)  # pyright: ignore[reportArgumentType]
        return await cur.fetchall() if cur.description else []


async def _liveness_rows(dsn: str, queue: str) -> list[str]:
    return [str(r[0]) for r in await _fetch(dsn, f"select identity from {LIVENESS} where queue_name = %s", (queue,))]


# -- in-process --------------------------------------------------------------------------------------------------


async def test_a_worker_behind_pgbouncer_proves_liveness_with_a_row_and_runs_tasks(
    pooled_client: AsyncAbsurd,
    absurd_dsn: str,
    absurd_queue: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session_locks: list[str] = []
    hold = takeover.hold_worker_lock

    async def recording_hold(conn: psycopg.AsyncConnection[Any], identity: str) -> int:
        session_locks.append(identity)
        return await hold(conn, identity)

    monkeypatch.setattr(takeover, "hold_worker_lock", recording_hold)

    @pooled_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        async def body() -> str:
            return f"hi {params}"

        return await ctx.step("greet", body)

    # More tasks than psycopg's prepare threshold (5): every repeated statement would be prepared by default.
    spawned = [await pooled_client.spawn("hello", i) for i in range(12)]
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(pooled_client, worker_id="behind-pgbouncer", claim_timeout=LONG_LEASE) as worker:
            for task in spawned:
                await wait_until(lambda task=task: is_completed(pooled_client, task["task_id"]))
            assert worker.health.fast_takeover
            assert worker.claim_id.startswith(rows.ROW_CLAIM_PREFIX)
            assert await _liveness_rows(absurd_dsn, absurd_queue) == [worker.claim_id]
    assert await _liveness_rows(absurd_dsn, absurd_queue) == []  # a clean stop deletes the row
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fast takeover by liveness row" in m for m in messages) == 1
    assert not [m for m in messages if "prepared statement" in m or "fast takeover disabled" in m]
    assert session_locks == []  # a session lock through PgBouncer would stay on a server connection


async def test_a_takeover_waiting_for_a_beat_leaves_the_live_worker_its_run(
    absurd_client: AsyncAbsurd, pgbouncer_dsn: str, absurd_dsn: str, absurd_queue: str
) -> None:
    identity = rows.row_claim_identity("interleaved")
    await _fetch(absurd_dsn, f"insert into {LIVENESS} (identity, queue_name) values (%s, %s)", (identity, absurd_queue))
    spawned = await absurd_client.spawn("anything", None, queue=absurd_queue)
    [claimed] = await absurd_client.claim_tasks(batch_size=1, claim_timeout=LONG_LEASE, worker_id=identity)
    assert claimed["task_id"] == spawned["task_id"]
    old = f"update {LIVENESS} set beat_at = clock_timestamp() - interval '1 hour' where identity = %s"
    await _fetch(absurd_dsn, old, (identity,))  # stale: a takeover now would hand the run back...
    async with await psycopg.AsyncConnection.connect(absurd_dsn) as beat:
        # ...but the worker's beat is in flight: it holds the row while the peer's takeover runs.
        await beat.execute(f"update {LIVENESS} set beat_at = clock_timestamp() where identity = %s", (identity,))
        peer_name = f"interleaving peer {absurd_queue}"
        async with await connect_async(pgbouncer_dsn, autocommit=True, application_name=peer_name) as peer:
            takeover = asyncio.ensure_future(
                hand_back_runs_of_stale_workers(peer, absurd_queue, rows.ROW_CLAIM_PREFIX, "peer", rows.STALE_AFTER)
            )
            await wait_until(lambda: _waits_for_a_lock(absurd_dsn, peer_name))
            await beat.commit()
            assert await takeover == []
    run = await latest_run(absurd_dsn, absurd_queue, spawned["task_id"])
    assert run == {"state": "running", "claimed_by": identity}
    assert await _liveness_rows(absurd_dsn, absurd_queue) == [identity]
    # The control: the same row, stale and not beaten, is deleted and the run handed back.
    await _fetch(absurd_dsn, old, (identity,))
    async with await connect_async(pgbouncer_dsn, autocommit=True) as peer:
        taken = await hand_back_runs_of_stale_workers(peer, absurd_queue, rows.ROW_CLAIM_PREFIX, "peer", 2.0)
    assert [run.run_id for run in taken] == [str(claimed["run_id"])]
    assert (await latest_run(absurd_dsn, absurd_queue, spawned["task_id"]))["state"] != "running"
    assert await _liveness_rows(absurd_dsn, absurd_queue) == []


async def _waits_for_a_lock(dsn: str, application_name: str) -> bool:
    found = await _fetch(
        dsn,
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and application_name = %s"
        " and query like %s",
        (application_name, f"%delete from {LIVENESS}%"),
    )
    return bool(found and found[0][0])


async def test_a_worker_presumed_dead_claims_in_a_fresh_identity(
    pgbouncer_dsn: str, absurd_dsn: str, absurd_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    liveness = rows.RowLiveness(pgbouncer_dsn, "fenced", absurd_queue, connect_timeout=5)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        assert await liveness.start()
        first = liveness.identity
        try:
            await _fetch(absurd_dsn, f"delete from {LIVENESS} where identity = %s", (first,))  # a peer's takeover
            await wait_until(lambda: _changed(liveness, first))
            await wait_until(lambda: _has_row(absurd_dsn, absurd_queue, liveness.identity))
        finally:
            await liveness.close()
    assert liveness.identity.startswith(rows.ROW_CLAIM_PREFIX)
    assert any(f"liveness row of {first} was removed by a peer" in r.getMessage() for r in caplog.records)
    assert await _liveness_rows(absurd_dsn, absurd_queue) == []


async def _changed(liveness: rows.RowLiveness, first: str) -> bool:
    return liveness.identity != first


async def _has_row(dsn: str, queue: str, identity: str) -> bool:
    return identity in await _liveness_rows(dsn, queue)


async def test_a_worker_presumed_dead_drops_its_runs_without_handing_them_back(
    pooled_client: AsyncAbsurd, pgbouncer_dsn: str, absurd_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    bodies = {"started": 0, "cancelled": 0}

    @pooled_client.register_task(name="held")
    async def held(params: Any, ctx: AsyncTaskContext) -> str:
        async def body() -> str:
            bodies["started"] += 1
            try:
                await release.wait()
            except asyncio.CancelledError:
                bodies["cancelled"] += 1
                raise
            return "done"

        return await ctx.step("held", body)

    spawned = await pooled_client.spawn("held", None)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(pooled_client, worker_id="presumed-dead", claim_timeout=LONG_LEASE) as worker:
            await wait_until(lambda: _is(bodies, "started", 1))
            first = worker.claim_id
            async with await connect_async(pgbouncer_dsn, autocommit=True) as peer:  # a peer's takeover, forced now
                taken = await hand_back_runs_of_stale_workers(peer, absurd_queue, rows.ROW_CLAIM_PREFIX, "peer", 0.0)
            assert [run.claimed_by for run in taken] == [first]
            # The worker learns at its next beat: it drops the old execution and claims the run again, anew.
            await wait_until(lambda: _is(bodies, "cancelled", 1))
            await wait_until(lambda: _is(bodies, "started", 2))
            assert worker.claim_id == first  # (the attribute keeps the identity of the start)
            release.set()
            await wait_until(lambda: is_completed(pooled_client, spawned["task_id"]))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"dropping task_id={spawned['task_id']}") for m in messages)
    assert not [m for m in messages if m.startswith("handed back")]


async def _is(counts: dict[str, int], key: str, n: int) -> bool:
    return counts[key] == n


# -- worker processes killed with SIGKILL -------------------------------------------------------------------------


def _start(workers: Workers, dsn: str, queue: str, tmp_path: Path, name: str) -> WorkerProcess:
    """A `worker_app` worker behind `dsn`, named uniquely per test (another session may run "a" and "b" too)."""
    health = tmp_path / f"health{len(workers.started)}.json"
    return workers.worker(
        dsn, queue, id=f"{queue}-{name}", claim_timeout=LONG_LEASE, poll_interval=0.1, health_log=health
    )


async def _ready(w: WorkerProcess) -> bool:
    return bool(w.health().get("fast_takeover"))


@pytest.mark.crash
async def test_sigkill_behind_pgbouncer_another_worker_resumes_before_the_lease_would_expire(
    absurd_client: AsyncAbsurd,
    effects: str,
    pgbouncer_dsn: str,
    absurd_queue: str,
    tmp_path: Path,
    workers: Workers,
    record_property: Any,
) -> None:
    dsn = effects
    spawned = await absurd_client.spawn("steps", {"steps": 3, "step_seconds": 0.05, "gate": "s1"}, queue=absurd_queue)
    task_id = spawned["task_id"]
    a = _start(workers, pgbouncer_dsn, absurd_queue, tmp_path, "a")
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s1", "start"))
    b = _start(workers, pgbouncer_dsn, absurd_queue, tmp_path, "b")
    await wait_until(lambda: _ready(b))
    claimed_by = (await latest_run(dsn, absurd_queue, task_id))["claimed_by"]
    assert str(claimed_by).startswith(f"{rows.ROW_CLAIM_PREFIX}{absurd_queue}-a:")
    a.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    a.wait()
    await wait_until(lambda: _started_twice(dsn, absurd_queue, task_id), interval=0.01)
    took = time.monotonic() - killed  # kill -> the step body runs again in b: reported, never asserted
    record_property("takeover_seconds", round(took, 3))
    print(f"\ntakeover behind PgBouncer: step running again {took:.2f}s after SIGKILL")
    await open_gate(dsn, absurd_queue, task_id, "s1")
    await wait_until(lambda: is_completed(absurd_client, task_id))  # the 60 s lease never expired
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and isinstance(snapshot.result, dict)
    assert snapshot.result["pid"] == b.pid
    events = await effect_events(dsn, absurd_queue, task_id)
    assert count_events(events, "s0", "start") == 1
    assert count_events(events, "s1", "start") == 2
    assert [count_events(events, f"s{i}", "end") for i in range(1, 3)] == [1, 1]
    assert (await task_state(dsn, absurd_queue, task_id))["attempts"] == 1
    assert f"took over task_id={task_id}" in b.output()


async def _started_twice(dsn: str, queue: str, task_id: str) -> bool:
    return count_events(await effect_events(dsn, queue, task_id), "s1", "start") >= 2


async def _checks(w: WorkerProcess) -> int:
    return int(w.health().get("takeover_checks", 0))


@pytest.mark.crash
async def test_a_live_worker_behind_pgbouncer_keeps_its_task_while_peers_poll(
    absurd_client: AsyncAbsurd,
    effects: str,
    pgbouncer_dsn: str,
    absurd_queue: str,
    tmp_path: Path,
    workers: Workers,
) -> None:
    dsn = effects
    a = _start(workers, pgbouncer_dsn, absurd_queue, tmp_path, "a")
    await wait_until(lambda: _ready(a))
    spawned = await absurd_client.spawn("steps", {"steps": 2, "step_seconds": 0.05, "gate": "s0"}, queue=absurd_queue)
    task_id = spawned["task_id"]
    await wait_until(lambda: seen_event(dsn, absurd_queue, task_id, "s0", "start"))
    b = _start(workers, pgbouncer_dsn, absurd_queue, tmp_path, "b")
    await wait_until(lambda: _ready(b))
    claimed_by = (await latest_run(dsn, absurd_queue, task_id))["claimed_by"]
    before = await _checks(b)
    # Twice STALE_AFTER worth of b's takeover checks while a's run is in flight.
    checks = int(2 * rows.STALE_AFTER / handback.TAKEOVER_CHECK_INTERVAL)
    await wait_until(lambda: _checks_since(b, before, checks))
    assert await latest_run(dsn, absurd_queue, task_id) == {"state": "running", "claimed_by": claimed_by}
    assert "took over" not in b.output()
    await open_gate(dsn, absurd_queue, task_id, "s0")
    await wait_until(lambda: is_completed(absurd_client, task_id))
    events = await effect_events(dsn, absurd_queue, task_id)
    assert [count_events(events, f"s{i}", "start") for i in range(2)] == [1, 1]
    assert {pid for _, event, pid in events if event != "open"} == {a.pid}


async def _checks_since(w: WorkerProcess, before: int, n: int) -> bool:
    return await _checks(w) >= before + n
