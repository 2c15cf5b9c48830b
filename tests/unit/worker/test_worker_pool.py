"""The worker's pool lends the connection given back last, and hands connections to `psycopg_pool` when it must."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.rows import class_row, dict_row
from psycopg_pool import AsyncConnectionPool

from pydantic_ai_absurd.worker import _pool as pool_module  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.worker._pool import WorkerPool
from tests.helpers.polling import WAIT, wait_until


@pytest.fixture
async def pool(absurd_dsn: str) -> AsyncIterator[WorkerPool]:
    lender = WorkerPool(absurd_dsn, size=3, application_name="pool test", connect_timeout=WAIT, name="pool-test")
    await lender.open()
    try:
        yield lender
    finally:
        await lender.close()


async def _pid(pool: WorkerPool) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("select pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_a_busy_worker_stays_on_the_connection_it_gave_back_last(pool: WorkerPool) -> None:
    async with pool.connection() as first, pool.connection() as second:
        assert first is not second
    pids = {await _pid(pool) for _ in range(10)}
    assert pids == {first.info.backend_pid}  # the last one given back (the outer block ends last), every time
    assert pool.pool.get_stats().get("requests_num", 0) == 2  # `psycopg_pool` lent twice, for the first two


async def test_a_borrower_waiting_for_the_pool_gets_the_connection_given_back(absurd_dsn: str) -> None:
    lender = WorkerPool(absurd_dsn, size=1, application_name="pool test", connect_timeout=WAIT, name="pool-test")
    await lender.open()
    try:
        async with lender.connection() as held:
            waiting = asyncio.ensure_future(_pid(lender))
            await wait_until(lambda: lender._asking == 1)  # pyright: ignore[reportPrivateUsage]  # asks `psycopg_pool`
        assert await asyncio.wait_for(waiting, WAIT) == held.info.backend_pid
    finally:
        await lender.close()


async def test_a_connection_left_in_a_transaction_is_rolled_back_before_it_is_lent_again(pool: WorkerPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("begin")
        await conn.execute("create temporary table left_open (x int)")
    async with pool.connection() as again:
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await again.execute("select count(*) from pg_tables where tablename = 'left_open'")
        assert await cur.fetchone() == (0,)


async def test_a_connection_unused_for_a_while_is_checked_before_it_is_lent(
    pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    original = AsyncConnectionPool.check_connection

    async def counted(conn: psycopg.AsyncConnection[Any]) -> None:
        checked.append(conn.info.backend_pid)
        await original(conn)

    await _pid(pool)  # the pool's first connection: checked (never used)
    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    await _pid(pool)
    await _pid(pool)
    assert checked == []  # lent again at once: no check
    monkeypatch.setattr(pool_module, "IDLE_CHECK_AFTER", -1.0)  # every connection at hand has sat idle too long
    pid = await _pid(pool)
    assert checked == [pid]


async def test_a_connection_in_steady_use_passes_through_psycopg_pool_now_and_then(
    pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _pid(pool)
    lent = pool.pool.get_stats().get("requests_num", 0)
    monkeypatch.setattr(pool_module, "RECYCLE_AFTER", -1.0)
    await _pid(pool)  # given back to `psycopg_pool` when it returns
    await _pid(pool)
    assert pool.pool.get_stats().get("requests_num", 0) == lent + 1


async def test_closing_closes_the_connections_at_hand(absurd_dsn: str) -> None:
    lender = WorkerPool(absurd_dsn, size=2, application_name="pool test", connect_timeout=WAIT, name="pool-test")
    await lender.open()
    async with lender.connection() as conn:
        pass
    await lender.close()
    assert conn.closed


async def test_a_connection_keeps_its_cursors_while_out_of_psycopg_pool(pool: WorkerPool) -> None:
    conn = await pool.get()
    cur = pool.cursor(conn, dict_row)
    assert pool.cursor(conn, dict_row) is cur and pool.cursor(conn, None) is not cur
    await cur.execute("select 1 as one")
    assert await cur.fetchall() == [{"one": 1}]
    await pool.put(conn)
    again = await pool.get()
    assert again is conn and pool.cursor(again, dict_row) is cur  # lent again directly: same cursor
    await pool.put(again)
    await pool.close()  # every connection goes back to `psycopg_pool`: its cursors are dropped
    assert pool._cursors == {}  # pyright: ignore[reportPrivateUsage]


async def test_a_row_factory_made_per_call_does_not_grow_a_connections_cursors(pool: WorkerPool) -> None:
    conn = await pool.get()
    for _ in range(20):
        pool.cursor(conn, class_row(_One))
    assert len(pool._cursors[conn]) <= 4  # pyright: ignore[reportPrivateUsage]
    await pool.put(conn)
    await pool.close()


@dataclass
class _One:
    one: int
