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
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


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
