"""`BorrowedConnection`: what it offers is all the SDK does with a task's connection; one statement per borrow."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pydantic_ai_absurd._absurd import BorrowedConnection, missing_private_names
from pydantic_ai_absurd._absurd._borrowed import _CONNECTION_USE, unsupported_connection_uses  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd._db import conninfo_of


def test_the_installed_sdk_uses_only_what_a_borrowed_connection_offers() -> None:
    assert unsupported_connection_uses() == ()
    assert not [name for name in missing_private_names() if "._conn." in name]


def test_the_start_up_check_sees_a_new_use_of_the_connection() -> None:
    source = "async def f(self):\n    async with self._conn.transaction():\n        await conn.pipeline()\n"
    assert set(_CONNECTION_USE.findall(source)) == {"transaction", "pipeline"}


async def test_each_statement_borrows_and_returns_a_connection(absurd_dsn: str) -> None:
    lent: list[int] = []
    returned: list[int] = []

    @contextlib.asynccontextmanager
    async def borrow() -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            lent.append(conn.info.backend_pid)
            yield conn
            returned.append(conn.info.backend_pid)

    conn = BorrowedConnection(borrow, absurd_dsn)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("select n from generate_series(1, 3) as n")
    assert len(lent) == len(returned) == 1  # given back before the rows are read
    assert await cur.fetchone() == {"n": 1}
    assert await cur.fetchall() == [{"n": 2}, {"n": 3}]
    assert await cur.fetchone() is None
    plain = await conn.execute("select %s::text", ("x",))
    assert await plain.fetchall() == [("x",)]
    assert len(lent) == len(returned) == 2
    assert not conn.broken and not conn.closed and conn.info.dsn == absurd_dsn


async def test_a_connection_that_breaks_marks_the_run_lost(absurd_dsn: str) -> None:
    @contextlib.asynccontextmanager
    async def borrow() -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            yield conn

    conn = BorrowedConnection(borrow, absurd_dsn)
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("select pg_terminate_backend(pg_backend_pid())")
    assert conn.broken
    fine = BorrowedConnection(borrow, absurd_dsn)
    cur = await fine.execute("select 1")
    assert await cur.fetchone() == (1,) and not fine.broken


def test_its_connection_string_is_read_like_a_real_connection() -> None:

    from pydantic_ai_absurd._absurd import BorrowedConnection

    def never() -> contextlib.AbstractAsyncContextManager[Any]:
        raise AssertionError("reading the connection string borrows no connection")

    dsn = "postgresql://app:secret@db.example/app"
    assert conninfo_of(BorrowedConnection(never, dsn)) == dsn  # type: ignore[arg-type]
