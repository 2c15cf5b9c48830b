"""Queues reused by the unit tests: emptied back to the state of a fresh queue instead of dropped and created again.

Creating a queue (Absurd's six tables and their indexes) and dropping it cost ~40 ms a test. `QueuePool` hands out
a queue, and at the end of the test empties it in one transaction: every row of every table Absurd has for it
(read from `pg_catalog`, so a table a later Absurd adds is emptied too), every row of this package's tables that
names it, and our triggers on its tables (with the library's note that they are installed). It then checks the
queue is indistinguishable from a fresh one (its `absurd.queues` settings, its tables, columns, indexes and
triggers), or drops it. Only the unit tests use it: the system tests' worker processes may outlive a test.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import psycopg
from psycopg import sql

from pydantic_ai_absurd.children import _links as child_links
from pydantic_ai_absurd.events import _writer as event_writer
from pydantic_ai_absurd.schema import create_queue_sync, drop_queue_sync

OWN_SCHEMA = "pydantic_ai_absurd"
QUEUE_COLUMNS = frozenset({"queue_name", "parent_queue", "child_queue"})
"""The columns by which a row of this package's tables belongs to a queue."""

OWN_TRIGGER_PREFIX = "pydantic_ai_absurd_"

_QUEUE_TABLES = """
select c.oid from pg_class c
 where c.relnamespace = 'absurd'::regnamespace and c.relkind in ('r', 'p') and c.relname ~ '^[a-z]+_'
   and substr(c.relname, position('_' in c.relname) + 1) = %(q)s
"""

_TABLES = f"select oid::regclass::text from ({_QUEUE_TABLES}) t order by 1"

_SHAPE = f"""
select c.relkind::text, replace(c.relname, %(q)s, '{{q}}'),
       (select string_agg(a.attname || ':' || a.atttypid::regtype::text, ',' order by a.attnum)
          from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped),
       (select string_agg(replace(pg_get_indexdef(i.indexrelid), %(q)s, '{{q}}'), ',' order by 1)
          from pg_index i where i.indrelid = c.oid),
       (select string_agg(t.tgname, ',' order by t.tgname) from pg_trigger t where t.tgrelid = c.oid and not t.tgisinternal),
       (select string_agg(replace(x.conname, %(q)s, '{{q}}') || ':' || x.contype::text, ',' order by 1)
          from pg_constraint x where x.conrelid = c.oid)
  from pg_class c where c.oid in ({_QUEUE_TABLES})
 order by 2
"""

_SETTINGS = "select to_jsonb(q) - 'queue_name' - 'created_at' from absurd.queues q where queue_name = %s"

_OWN_COLUMNS = """
select c.relname, a.attname from pg_attribute a join pg_class c on c.oid = a.attrelid
 where c.relnamespace = %s::regnamespace and c.relkind = 'r' and a.attnum > 0 and not a.attisdropped
   and a.attname like '%%queue%%'
 order by 1, 2
"""


class QueuePool:
    """Queues for one test process: `take()` one for a test, `give_back()` it after; `close()` drops them all."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._idle: list[str] = []
        self._known: set[str] = set()
        self._fresh: tuple[Any, list[Any]] | None = None

    def take(self) -> str:
        """An empty queue no other test of this process uses now."""
        if self._idle:
            return self._idle.pop()
        name = f"test_{uuid.uuid4().hex[:12]}"
        create_queue_sync(self._dsn, name)
        self._known.add(name)
        if self._fresh is None:
            self._fresh = self._state(self._connection(), name)
        return name

    def give_back(self, name: str) -> None:
        """Empty `name` for the next test, or drop it when it cannot be made fresh again."""
        try:
            self._empty(name)
        except Exception:
            self._known.discard(name)
            with contextlib.suppress(Exception):
                drop_queue_sync(self._dsn, name)
        else:
            self._idle.append(name)

    def close(self) -> None:
        """Drop every queue of the pool (best effort) and close the connection."""
        for name in sorted(self._known):
            with contextlib.suppress(Exception):
                drop_queue_sync(self._dsn, name)
        self._known.clear()
        self._idle.clear()
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, prepare_threshold=None)
        return self._conn

    def _state(self, conn: psycopg.Connection[Any], name: str) -> tuple[Any, list[Any]]:
        settings = conn.execute(_SETTINGS, (name,)).fetchone()
        return (settings[0] if settings else None), conn.execute(_SHAPE, {"q": name}).fetchall()

    def _empty(self, name: str) -> None:
        conn = self._connection()
        forget_triggers(name)
        with conn.transaction():
            conn.execute("set local lock_timeout = '5s'")
            drop_own_triggers(conn, name)
            empty_queue(conn, name)
            if self._state(conn, name) != self._fresh:
                raise AssertionError(f"queue {name} differs from a fresh queue")


def drop_own_triggers(conn: psycopg.Connection[Any], name: str) -> None:
    """Drop the triggers this package installed on the tables of queue `name`."""
    rows = conn.execute(
        "select t.tgname, c.oid::regclass::text from pg_trigger t join pg_class c on c.oid = t.tgrelid"
        f" where c.oid in ({_QUEUE_TABLES}) and not t.tgisinternal and t.tgname like %(prefix)s",
        {"q": name, "prefix": OWN_TRIGGER_PREFIX + "%"},
    ).fetchall()
    for trigger, table in rows:
        conn.execute(sql.SQL("drop trigger {} on {}").format(sql.Identifier(trigger), sql.SQL(table)))


def forget_triggers(name: str) -> None:
    """Make the library install its triggers again (it remembers the queues it did, per process) on queue `name`
    and on the queues a test named after it (`f"{absurd_queue}_c"`), which come back when `name` is reused."""
    for installed in (event_writer._triggers_installed, child_links._installed):  # pyright: ignore[reportPrivateUsage]
        installed.difference_update({key for key in installed if key[1].startswith(name)})


def empty_queue(conn: psycopg.Connection[Any], name: str) -> None:
    """Delete every row of queue `name`: in each of Absurd's tables for it and in this package's tables.

    Fails when a table of this package has a queue column whose meaning is unknown here (a new table to think about).
    """
    tables = conn.execute(_TABLES, {"q": name}).fetchall()
    if not tables:
        raise AssertionError(f"queue {name} has no tables")
    deletes = [sql.SQL("delete from {}").format(sql.SQL(table)) for (table,) in tables]
    by_table: dict[str, list[str]] = {}
    for table, column in conn.execute(_OWN_COLUMNS, (OWN_SCHEMA,)).fetchall():
        if column not in QUEUE_COLUMNS:
            raise AssertionError(f"{OWN_SCHEMA}.{table}.{column}: unknown queue column, teach tests/helpers/queue_pool")
        by_table.setdefault(table, []).append(column)
    for table, columns in by_table.items():
        where = sql.SQL(" or ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(name)) for c in columns)
        deletes.append(sql.SQL("delete from {} where {}").format(sql.Identifier(OWN_SCHEMA, table), where))
    conn.execute(sql.SQL("; ").join(deletes))  # one round trip: a statement list without parameters
