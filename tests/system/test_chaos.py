"""Faults around durable agent runs on production workers (`run_worker` in `tests/helpers/apps/matrix_worker.py`, mode `chaos`).

Every task is a short agent run: model call -> side-effect tool -> model call. Every step body appends
`<task> <effect> <run_id>` to a file (fsync'd), so the tests can prove, against Absurd's checkpoint table,
that no committed step ran again: every execution of a step happened in the run that committed it or in an
earlier (lost) run, never after.

Cancellation of a running task (it ends `cancelled`, its in-flight model call is aborted) is covered by
`tests/system/test_lease.py::test_cancel_aborts_the_in_flight_call_within_a_heartbeat`.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from tests.helpers.apps._common import read_lines
from tests.helpers.apps.matrix_worker import effect_of
from tests.helpers.polling import wait_until
from tests.helpers.processes import Process, Workers

pytestmark = pytest.mark.crash

WAIT = 60.0
"""Generous bound (seconds) for anything awaited; never a performance assertion."""
EFFECTS = ["model@0", "tool@c-bump", "model@1"]


def start_worker(workers: Workers, dsn: str, queue: str, state: Path, **settings: Any) -> Process:
    """A `matrix_worker chaos` process (settings as `CHAOS_<NAME>` environment variables)."""
    env = {"CHAOS_DSN": dsn, "CHAOS_QUEUE": queue, "CHAOS_STATE": str(state)}
    env.update({f"CHAOS_{k.upper()}": str(v) for k, v in settings.items()})
    return workers.app("matrix_worker", "chaos", env=env)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "chaos"
    path.mkdir()
    return path


async def spawn_many(absurd: AsyncAbsurd, queue: str, count: int) -> dict[str, str]:
    """Spawn `count` chaos tasks; return task id -> label."""
    labels: dict[str, str] = {}
    for i in range(count):
        spawned = await absurd.spawn("chaos", {"label": f"t{i}"}, max_attempts=20, queue=queue)
        labels[str(spawned["task_id"])] = f"t{i}"
    return labels


async def _query(dsn: str, query: sql.Composable, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def task_states(dsn: str, queue: str) -> Counter[str]:
    rows = await _query(dsn, sql.SQL("select state from absurd.{}").format(sql.Identifier(f"t_{queue}")))
    return Counter(str(row[0]) for row in rows)


async def all_completed(dsn: str, queue: str, count: int, timeout: float = WAIT) -> None:
    async def done() -> bool:
        states = await task_states(dsn, queue)
        assert not states["failed"] and not states["cancelled"], states
        return states["completed"] >= count

    await wait_until(done, timeout, interval=0.2, message=f"not all {count} tasks completed within {timeout} s")


async def check_effects(dsn: str, queue: str, state: Path, labels: dict[str, str]) -> dict[str, int]:
    """Prove that no committed step ran again; return, per task, how many step bodies started more than once.

    Checked for step bodies that started (`starts`) and for side effects that happened (`effects`): each
    ran in the run that committed its checkpoint, or in earlier (lost) runs, never in a later one.
    """
    runs = {
        str(run_id): int(attempt)
        for run_id, attempt in await _query(
            dsn, sql.SQL("select run_id, attempt from absurd.{}").format(sql.Identifier(f"r_{queue}"))
        )
    }
    checkpoints = await _query(
        dsn,
        sql.SQL("select task_id, checkpoint_name, owner_run_id from absurd.{}").format(sql.Identifier(f"c_{queue}")),
    )
    extra: dict[str, int] = {}
    for file in ("starts", "effects"):
        executions: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in read_lines(state / file):
            label, effect, run_id = line.split()
            executions[(label, effect)].append(run_id)
        committed: set[tuple[str, str]] = set()
        for task_id, checkpoint, owner in checkpoints:
            effect = effect_of(str(checkpoint))
            if effect is None:
                continue
            label = labels[str(task_id)]
            committed.add((label, effect))
            ran_in = executions[(label, effect)]
            assert str(owner) in ran_in, (file, label, effect, ran_in)
            late = [r for r in ran_in if runs[r] > runs[str(owner)]]
            assert not late, f"{label} {effect}: {file} in runs after the one that committed it: {ran_in}"
            if file == "starts":
                extra[label] = extra.get(label, 0) + len(ran_in) - 1
        assert committed == {(label, effect) for label in labels.values() for effect in EFFECTS}
        assert set(executions) == committed, file  # no step body of a checkpoint that never committed
    return extra


async def test_200_tasks_survive_a_chaos_loop_of_sigkilled_workers(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, state: Path, workers: Workers
) -> None:
    concurrency, kills = 4, 6
    settings = {"concurrency": concurrency, "claim_timeout": 2, "step_seconds": 0.1}
    labels = await spawn_many(absurd_client, absurd_queue, 200)
    alive = [(time.monotonic(), start_worker(workers, absurd_dsn, absurd_queue, state, **settings)) for _ in range(4)]
    seed = random.randrange(1 << 32)
    chaos = random.Random(seed)
    await wait_until(lambda: read_lines(state / "effects"), WAIT)
    for _ in range(kills):
        await asyncio.sleep(chaos.uniform(0.3, 0.8))
        # Kill a worker that had time to start up and claim tasks, so the kill lands mid-run.
        booted = [i for i, (started, _) in enumerate(alive) if time.monotonic() - started > 2.5] or [0]
        _, victim = alive.pop(chaos.choice(booted))
        victim.send_signal(signal.SIGKILL)
        assert await victim.wait_exit(WAIT) == -signal.SIGKILL
        alive.append((time.monotonic(), start_worker(workers, absurd_dsn, absurd_queue, state, **settings)))
    await all_completed(absurd_dsn, absurd_queue, 200, timeout=120)

    extra = await check_effects(absurd_dsn, absurd_queue, state, labels)
    # A SIGKILL loses at most the in-flight step of each task the worker was running (it then starts again).
    assert sum(extra.values()) <= kills * concurrency, (seed, extra)
    assert all(count <= kills for count in extra.values()), (seed, extra)
    lost = await _query(
        absurd_dsn,
        sql.SQL("select count(*) from absurd.{} where failure_reason->>'name' = '$ClaimTimeout'").format(
            sql.Identifier(f"r_{absurd_queue}")
        ),
    )
    # A kill that lands mid-run shows as a run failed by lease expiry, or (fast takeover) as a run a peer took over.
    taken_over = sum(w.output().count("took over task_id=") for w in workers.started)
    assert lost[0][0] + taken_over >= 1, "no kill landed while a task was running"
    for _, worker in alive:
        worker.send_signal(signal.SIGTERM)
    for _, worker in alive:
        assert await worker.wait_exit(WAIT) == 0
    print({"seed": seed, "runs lost": lost[0][0], "in-flight steps started again": sum(extra.values())})


async def test_sigterm_hands_agent_runs_back_and_another_worker_resumes_at_once(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, state: Path, workers: Workers
) -> None:
    labels = await spawn_many(absurd_client, absurd_queue, 4)
    # Long leases: the tasks can only move to worker B within the wait because A hands them back.
    a = start_worker(
        workers, absurd_dsn, absurd_queue, state, concurrency=4, claim_timeout=60, drain_timeout=0.3, step_seconds=1.0
    )
    await wait_until(lambda: read_lines(state / "effects"), WAIT)
    b = start_worker(workers, absurd_dsn, absurd_queue, state, concurrency=4, claim_timeout=60, step_seconds=1.0)
    await asyncio.sleep(1.0)
    a.send_signal(signal.SIGTERM)
    assert await a.wait_exit(WAIT) == 0
    await all_completed(absurd_dsn, absurd_queue, 4, timeout=40)  # well within A's 60 s leases
    extra = await check_effects(absurd_dsn, absurd_queue, state, labels)
    assert all(count <= 1 for count in extra.values()), extra
    assert "handing back 4 in-flight task(s)" in a.output()
    b.send_signal(signal.SIGTERM)
    assert await b.wait_exit(WAIT) == 0


async def test_a_stalled_worker_loses_its_expired_lease_to_another(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, state: Path, workers: Workers
) -> None:
    labels = await spawn_many(absurd_client, absurd_queue, 1)
    (task_id,) = labels
    a = start_worker(workers, absurd_dsn, absurd_queue, state, concurrency=1, claim_timeout=2, step_seconds=0.5)
    await wait_until(lambda: read_lines(state / "effects"), WAIT)  # model@0 committed or about to; A is inside a step
    a.send_signal(signal.SIGSTOP)  # a stalled worker (GC pause, frozen VM): its lease expires
    try:
        b = start_worker(workers, absurd_dsn, absurd_queue, state, concurrency=1, claim_timeout=2, step_seconds=0.5)
        await all_completed(absurd_dsn, absurd_queue, 1)
    finally:
        a.send_signal(signal.SIGCONT)
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "completed"
    await asyncio.sleep(2.0)  # A wakes up, finishes its step body, and must not overwrite anything
    after = await absurd_client.fetch_task_result(task_id)
    assert after is not None and (after.state, after.result) == ("completed", snapshot.result)
    extra = await check_effects(absurd_dsn, absurd_queue, state, labels)
    assert extra[labels[task_id]] <= 1, extra
    rows = await _query(
        absurd_dsn,
        sql.SQL(
            "select attempt, state, failure_reason->>'name' from absurd.{} where task_id = %s order by attempt"
        ).format(sql.Identifier(f"r_{absurd_queue}")),
        (task_id,),
    )
    assert [(r[0], r[1]) for r in rows] == [(1, "failed"), (2, "completed")], rows
    assert rows[0][2] == "$ClaimTimeout"
    for worker in (a, b):
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait_exit(WAIT) == 0


async def test_all_tasks_complete_across_a_postgres_restart(state: Path, workers: Workers) -> None:
    from pydantic_ai_absurd.embedded import default_embedded_dir, start_embedded

    # A server of our own, in a directory of its own: the shared test server is never restarted.
    server = await asyncio.to_thread(
        start_embedded, default_embedded_dir(f"chaos-restart-{uuid.uuid4().hex[:12]}"), queues=["restart"]
    )
    dsn, queue = server.dsn, "restart"
    try:
        client = AsyncAbsurd(dsn, queue_name=queue)
        try:
            labels = await spawn_many(client, queue, 20)
        finally:
            await client.close()
        # Leases outlast the restart however slow it is on a loaded machine: each worker hands its runs back when
        # it reconnects, so every in-flight step starts again once (an expired lease would add a second start).
        started = [
            start_worker(workers, dsn, queue, state, concurrency=4, claim_timeout=60, step_seconds=0.2)
            for _ in range(2)
        ]
        await wait_until(lambda: len(read_lines(state / "effects")) >= 10, WAIT)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)
        await all_completed(dsn, queue, 20, timeout=90)
        extra = await check_effects(dsn, queue, state, labels)
        assert sum(extra.values()) <= 2 * 4, extra  # at most the in-flight step of each running task
        for worker in started:
            worker.send_signal(signal.SIGTERM)
        for worker in started:
            assert await worker.wait_exit(WAIT) == 0
    finally:
        workers.close()  # before the server goes
        await asyncio.to_thread(server.destroy)
