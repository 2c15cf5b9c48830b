"""Raw SQL on Absurd's schema and queues: its version, whether it is installed, creating and dropping queues.

The companion of `_sql` for installation and start-up checks; the blocking (`_sync`) twins serve `setup`,
which runs on a plain psycopg connection.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

__all__ = [
    "CURRENT_TIME",
    "absurd_schema_exists_sync",
    "create_queue_on",
    "drop_queue_on",
    "has_schema_version",
    "has_schema_version_sync",
    "queue_exists",
    "queue_exists_sync",
    "queues_table_exists_sync",
    "schema_version",
    "schema_version_sync",
]

CURRENT_TIME = sql.SQL("absurd.current_time()")
"""Absurd's clock as an SQL expression, for queries of other layers that compare against it."""

_HAS_VERSION = "select to_regprocedure('absurd.get_schema_version()') is not null"
_VERSION = "select absurd.get_schema_version()"
_QUEUE_EXISTS = "select 1 from absurd.queues where queue_name = %s"


def has_schema_version_sync(conn: psycopg.Connection[Any]) -> bool:
    """Whether `absurd.get_schema_version()` exists (a schema Absurd's tools can manage)."""
    row = conn.execute(_HAS_VERSION).fetchone()
    return bool(row and row[0])


def schema_version_sync(conn: psycopg.Connection[Any]) -> str | None:
    """Absurd's installed schema version, or `None` when `absurd.get_schema_version()` is missing."""
    if not has_schema_version_sync(conn):
        return None
    row = conn.execute(_VERSION).fetchone()
    return str(row[0]) if row is not None and row[0] is not None else None


def absurd_schema_exists_sync(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database has a schema named `absurd` (whatever is in it)."""
    row = conn.execute("select to_regnamespace('absurd') is not null").fetchone()
    return bool(row and row[0])


def queues_table_exists_sync(conn: psycopg.Connection[Any]) -> bool:
    """Whether `absurd.queues` exists (an old release without `get_schema_version()` has it too)."""
    return conn.execute("select to_regclass('absurd.queues') is not null").fetchone() == (True,)


def queue_exists_sync(conn: psycopg.Connection[Any], queue_name: str) -> bool:
    """Whether `queue_name` is a row of `absurd.queues`."""
    return conn.execute(_QUEUE_EXISTS, (queue_name,)).fetchone() is not None


def create_queue_on(conn: psycopg.Connection[Any], queue_name: str) -> None:
    """`absurd.create_queue(queue_name)`."""
    conn.execute("select absurd.create_queue(%s)", (queue_name,))


def drop_queue_on(conn: psycopg.Connection[Any], queue_name: str) -> None:
    """`absurd.drop_queue(queue_name)`: the queue and all its tasks, runs, checkpoints and events."""
    conn.execute("select absurd.drop_queue(%s)", (queue_name,))


async def has_schema_version(conn: AsyncConnection[Any], *, with_queues: bool = False) -> bool:
    """Async `has_schema_version_sync`; `with_queues` also requires `absurd.queues`."""
    query = (
        "select to_regclass('absurd.queues') is not null and to_regprocedure('absurd.get_schema_version()') is not null"
        if with_queues
        else _HAS_VERSION
    )
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return bool(row and row[0])


async def schema_version(conn: AsyncConnection[Any]) -> str | None:
    """Async `schema_version_sync`."""
    if not await has_schema_version(conn):
        return None
    cur = await conn.execute(_VERSION)
    row = await cur.fetchone()
    return str(row[0]) if row is not None and row[0] is not None else None


async def queue_exists(conn: AsyncConnection[Any], queue_name: str) -> bool:
    """Async `queue_exists_sync`."""
    cur = await conn.execute(_QUEUE_EXISTS, (queue_name,))
    return await cur.fetchone() is not None
