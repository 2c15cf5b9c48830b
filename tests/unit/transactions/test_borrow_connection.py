"""`_db.borrow_connection`: connections are reused within an event loop and never outlive it."""

from __future__ import annotations

import asyncio

import psycopg

from pydantic_ai_absurd._db import borrow_connection, is_quiet
from tests.helpers.polling import wait_until


async def test_an_idle_connection_is_reused_and_a_dirty_one_is_not(absurd_dsn: str) -> None:
    async with borrow_connection(absurd_dsn) as conn:
        first = conn.info.backend_pid
    async with borrow_connection(absurd_dsn) as conn:
        assert conn.info.backend_pid == first
        await conn.set_autocommit(False)
        await conn.execute("select 1")  # left inside a transaction: closed, not kept
    async with borrow_connection(absurd_dsn) as conn:
        assert conn.info.backend_pid != first
        assert conn.autocommit


async def test_an_idle_connection_whose_backend_ended_is_replaced_without_an_error(absurd_dsn: str) -> None:
    async with borrow_connection(absurd_dsn) as idle:
        first = idle.info.backend_pid
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as admin:
        await admin.execute("select pg_terminate_backend(%s, 5000)", (first,))  # as a server restart would
    await wait_until(lambda: not is_quiet(idle))  # its socket has the end of the stream now
    async with borrow_connection(absurd_dsn) as conn:
        assert conn.info.backend_pid != first
        assert await (await conn.execute("select 1")).fetchone() == (1,)


def test_connections_left_idle_by_a_finished_loop_are_closed(absurd_dsn: str) -> None:
    pids: list[int] = []

    async def use() -> None:
        async def one() -> None:
            async with borrow_connection(absurd_dsn) as conn:
                pids.append(conn.info.backend_pid)
                await conn.execute("select pg_sleep(0.01)")

        await asyncio.gather(one(), one(), one())

    asyncio.run(use())
    asyncio.run(use())  # the next loop's first borrow closes what the first loop left
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where pid = any(%s)", (pids[:3],)).fetchone()
    assert row == (0,)
