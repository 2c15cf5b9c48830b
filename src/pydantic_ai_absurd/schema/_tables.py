"""The tables of pydantic-ai-absurd itself, in the Postgres schema `pydantic_ai_absurd`, and their migrations.

Each product layer that needs a table ships a numbered migration file, `migrations/NNN_name.sql`,
applied in order by `setup()` inside its transaction and under its advisory lock, and recorded in
`pydantic_ai_absurd.migrations`. Re-running `setup()` applies only what is missing. Files are never
edited once released: a change is a new file.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from ..errors import SchemaInstallError, one_line

__all__ = ["OWN_SCHEMA", "QUEUE_TABLES", "apply_own_migrations", "delete_queue_rows", "own_migrations"]

OWN_SCHEMA = "pydantic_ai_absurd"
"""The Postgres schema holding this package's tables (never inside Absurd's `absurd` schema)."""

_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def own_migrations() -> list[tuple[str, str]]:
    """Every shipped migration as `(name, sql)`, in order."""
    folder = resources.files("pydantic_ai_absurd.schema").joinpath("migrations")
    found = sorted(entry.name for entry in folder.iterdir() if _FILE_NAME.match(entry.name))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text(encoding="utf-8")) for name in found]


def apply_own_migrations(conn: psycopg.Connection[Any], where: str) -> list[str]:
    """Create the schema and apply the migrations it lacks; returns the names applied now.

    Runs in the caller's transaction, which holds `setup()`'s advisory lock.
    """
    conn.execute(f"create schema if not exists {OWN_SCHEMA}")
    conn.execute(
        f"create table if not exists {OWN_SCHEMA}.migrations ("
        " name text primary key, applied_at timestamptz not null default now())"
    )
    done = {str(row[0]) for row in conn.execute(f"select name from {OWN_SCHEMA}.migrations").fetchall()}
    applied: list[str] = []
    for name, sql in own_migrations():
        if name in done:
            continue
        try:
            conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise SchemaInstallError(
                f"Migration {name} of the {OWN_SCHEMA} schema in {where} failed: {one_line(exc)} "
                "(nothing was changed; connect as a role that may create schemas and tables)."
            ) from exc
        conn.execute(f"insert into {OWN_SCHEMA}.migrations (name) values (%s)", (name,))
        applied.append(name)
    return applied


QUEUE_TABLES: dict[str, tuple[str, ...]] = {
    "events": ("queue_name",),
    "lost_executions": ("queue_name",),
    "task_registrations": ("queue_name",),
    "worker_liveness": ("queue_name",),
    "child_tasks": ("child_queue", "parent_queue"),
}
"""Our tables whose rows belong to a queue, with the columns that name it: deleted when the queue is dropped.

(`absurd.drop_queue` drops the queue's task table without deleting its rows, so the `child_tasks` triggers that
delete rows with their tasks do not fire.) Inbox requests of a dropped queue go with `Inbox.purge()`;
conversations belong to no queue.
"""


def delete_queue_rows(conn: psycopg.Connection[Any], queue_name: str) -> None:
    """Delete the rows of `queue_name` in `QUEUE_TABLES` (those of the tables that exist)."""
    for table, columns in QUEUE_TABLES.items():
        found = conn.execute("select to_regclass(%s)", (f"{OWN_SCHEMA}.{table}",)).fetchone()
        if found is not None and found[0] is not None:
            names_queue = SQL(" or ").join(SQL("{} = %(queue)s").format(Identifier(column)) for column in columns)
            query = SQL("delete from {} where {}").format(Identifier(OWN_SCHEMA, table), names_queue)
            conn.execute(query, {"queue": queue_name})
