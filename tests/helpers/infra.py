"""Helpers for the infrastructure tests (schema, embedded server, CLI, plugin)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Generator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pydantic_ai_absurd.embedded import EmbeddedPostgres


def dsn_for_database(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


@contextlib.contextmanager
def fresh_database(server_dsn: str) -> Generator[str]:
    """A new, empty database on the server of `server_dsn` (dropped afterwards)."""
    name = f"paa_{uuid.uuid4().hex[:10]}"
    admin = dsn_for_database(server_dsn, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield dsn_for_database(server_dsn, name)
    finally:
        _drop_database(server_dsn, name)


def fake_schema_version(dsn: str, version: str) -> None:
    """Make `absurd.get_schema_version()` report `version` (simulates another installed release)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create or replace function absurd.get_schema_version() returns text language sql "
                "as $$ select {}::text $$"
            ).format(sql.Literal(version))
        )


@contextlib.contextmanager
def server_root() -> Generator[Path]:
    """A directory for a private embedded server, reachable by `nobody` when running as root.

    pytest's tmp_path lives under a 0700 directory, which the server user cannot traverse as root.
    """
    root = Path(tempfile.mkdtemp(prefix="paa-test-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root / "srv"
    finally:
        with contextlib.suppress(Exception):
            EmbeddedPostgres(root / "srv").stop()
        shutil.rmtree(root, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return ""


_CATALOG = """
select (select array_agg(nspname::text order by nspname) from pg_namespace where nspname !~ '^pg_(toast_)?temp_'),
       (select array_agg(extname::text order by extname) from pg_extension),
       (select count(*) from pg_class), (select count(*) from pg_proc), (select count(*) from pg_type),
       (select count(*) from pg_largeobject_metadata), (select count(*) from pg_event_trigger),
       (select count(*) from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase
         where d.datname = current_database())
"""


class EmptyDatabases:
    """`fresh_database` for one test process, reusing a database a test left as it found it.

    A test that created anything in its database (a schema, a function, a setting) gets its database dropped;
    one that only read it (most tests of a database without the schema) hands it on.
    """

    def __init__(self, server_dsn: str) -> None:
        self._server_dsn = server_dsn
        self._idle: list[tuple[str, str, tuple[object, ...]]] = []

    def take(self) -> tuple[str, str, tuple[object, ...]]:
        """A new or untouched empty database: `(name, dsn, catalog at creation)`."""
        if self._idle:
            return self._idle.pop()
        name = f"paa_{uuid.uuid4().hex[:10]}"
        admin = dsn_for_database(self._server_dsn, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        dsn = dsn_for_database(self._server_dsn, name)
        return name, dsn, _catalog(dsn)

    def give_back(self, database: tuple[str, str, tuple[object, ...]]) -> None:
        """Keep `database` for the next test if its catalog is unchanged, else drop it."""
        name, dsn, catalog = database
        try:
            unchanged = _catalog(dsn) == catalog
        except psycopg.Error:
            unchanged = False
        if unchanged:
            self._idle.append(database)
        else:
            _drop_database(self._server_dsn, name)

    def close(self) -> None:
        """Drop the databases kept for reuse."""
        for name, _, _ in self._idle:
            with contextlib.suppress(psycopg.Error):
                _drop_database(self._server_dsn, name)
        self._idle.clear()


def _catalog(dsn: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_CATALOG).fetchone()
    assert row is not None
    return tuple(row)


def _drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(dsn_for_database(server_dsn, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
