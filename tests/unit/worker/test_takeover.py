"""Takeover inside one process: claim marks, the worker locks, and the fallback to leases for pooled connections."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql

from pydantic_ai_absurd._db import is_quiet
from pydantic_ai_absurd.worker import _liveness_rows as liveness_rows  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.sql import latest_run, runs, task_state
from tests.helpers.workers import (
    is_completed,
    lock_holders,
    running_worker,
    takeover_checks_at_least,
)

LONG_LEASE = 60
"""Seconds; longer than any wait of these tests, so a run that moved on did so by takeover, not by lease expiry."""


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
        await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
        assert worker.health.taken_over == 1
        assert worker.health.fast_takeover
    assert (await task_state(absurd_dsn, absurd_queue, spawned["task_id"]))["attempts"] == 1  # no attempt used


async def test_a_run_claimed_by_another_kind_of_worker_is_never_handed_back(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    spawned = await absurd_client.spawn("not_registered_here", None, queue=absurd_queue)
    await absurd_client.claim_tasks(claim_timeout=LONG_LEASE, worker_id="plain-absurd-worker")
    async with running_worker(absurd_client) as worker:
        await wait_until(lambda: takeover_checks_at_least(worker, 4))
        assert worker.health.taken_over == 0
    row = await latest_run(absurd_dsn, absurd_queue, spawned["task_id"])
    assert row == {"state": "running", "claimed_by": "plain-absurd-worker"}


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
        row = await latest_run(absurd_dsn, absurd_queue, spawned["task_id"])
        assert row["claimed_by"] == worker.claim_id
        assert worker.claim_id.startswith(f"{takeover.CLAIM_PREFIX}marks:")
        assert await lock_holders(absurd_dsn, worker.claim_id) == takeover.LOCK_CONNECTIONS == 2
        release.set()
        await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
    # Released on stop: the server ends the lock's sessions a moment after the worker closed them.
    await wait_until(lambda: _no_lock_holders(absurd_dsn, worker.claim_id))


async def _no_lock_holders(dsn: str, identity: str) -> bool:
    return await lock_holders(dsn, identity) == 0


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
            await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
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


async def test_a_lock_connection_whose_backend_ended_is_noticed_without_a_statement(absurd_dsn: str) -> None:
    quiet = is_quiet
    async with (
        await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as killer,
    ):
        assert quiet(conn)  # an idle live session: nothing to read, no round trip
        await killer.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))

        async def noticed() -> bool:
            return not quiet(conn)

        await wait_until(noticed)
