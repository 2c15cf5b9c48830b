"""Install, migrate and check Absurd's SQL schema, and create queues, with psycopg alone.

The SQL comes from `absurdctl` (bundled in the wheel), so no `psql` binary and no network are
needed. `absurd.sql` is not idempotent (plain `create function`), so the installed version is
read from `absurd.get_schema_version()` first. The whole check-then-install/migrate and the
queue creation run in one transaction under a transaction-scoped advisory lock: several
processes may call `setup()` at once; the first installs, the others wait and then see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import absurdctl  # pyright: ignore[reportMissingTypeStubs]
import psycopg

from .._absurd import (
    absurd_schema_exists_sync,
    create_queue_on,
    drop_queue_on,
    has_schema_version,
    queue_exists_sync,
    queues_table_exists_sync,
    schema_version,
    schema_version_sync,
)
from .._db import connect, connect_async, create_queue_hint, queue_not_found, require_queue
from .._dsn import connection_url, redact_dsn, resolve_dsn
from ..errors import (
    QueueNameError,
    QueueNotFoundError,
    SchemaInstallError,
    SchemaNotInstalledError,
    SchemaVersionError,
    one_line,
)
from ._tables import OWN_SCHEMA, apply_own_migrations, delete_queue_rows

__all__ = [
    "ABSURD_SCHEMA_VERSION",
    "MAX_QUEUE_NAME_BYTES",
    "SchemaInfo",
    "check_schema",
    "check_schema_sync",
    "create_queue_sync",
    "drop_queue_sync",
    "ensure_queue_exists",
    "ensure_queue_exists_sync",
    "setup",
    "setup_sync",
    "validate_queue_name",
]

ABSURD_SCHEMA_VERSION: str = absurdctl.ABSURD_SCHEMA_TARGET_VERSION
"""The Absurd schema version bundled with the installed `absurdctl` (what `setup()` installs)."""

MAX_QUEUE_NAME_BYTES = 57
"""Absurd's limit: queue names become table/index name parts within Postgres' 63-byte identifiers."""

# Arbitrary but fixed 63-bit key ("pyaiabsd" in ASCII), shared by every process running setup().
_SETUP_LOCK_KEY = 0x7079_6169_6162_7364

# absurdctl is untyped; these typed views keep pyright strict happy and document what we rely on.
_compare_versions = cast(Callable[[str, str], int], absurdctl.compare_versions)  # pyright: ignore[reportUnknownMemberType]
_discover_bundled_migrations = cast(
    Callable[[], dict[tuple[str, str], dict[str, Any]]], absurdctl.discover_bundled_migrations
)
_resolve_migration_path = cast(
    Callable[[str, str, dict[tuple[str, str], dict[str, Any]]], "list[dict[str, Any]] | None"],
    absurdctl.resolve_migration_path,  # pyright: ignore[reportUnknownMemberType]
)

Action = Literal["installed", "migrated", "up_to_date"]


@dataclass(frozen=True)
class SchemaInfo:
    """What `setup()` found and did."""

    database: str
    """The connection string with any password redacted."""
    version: str
    """The schema version installed after setup (always `ABSURD_SCHEMA_VERSION`)."""
    action: Action
    """`'installed'` on a database without Absurd, `'migrated'` from an older version, else `'up_to_date'`."""
    previous_version: str | None = None
    """The version found before setup (`None` when nothing was installed)."""
    migrations: tuple[str, ...] = ()
    """Names of the bundled migration files applied, in order."""
    queues_created: tuple[str, ...] = ()
    """Queues that did not exist and were created."""
    queues_existing: tuple[str, ...] = field(default=())
    """Queues that were requested and already existed."""
    own_migrations: tuple[str, ...] = ()
    """Migrations of this package's own tables (schema `pydantic_ai_absurd`) applied now."""

    def describe(self) -> list[str]:
        """One human-readable line per action taken (used by `pydantic-ai-absurd init`)."""
        if self.action == "installed":
            lines = [f"Installed Absurd schema {self.version} in {self.database}"]
        elif self.action == "migrated":
            lines = [
                f"Migrated Absurd schema {self.previous_version} -> {self.version} in {self.database}"
                f" ({', '.join(self.migrations) or 'no SQL needed'})"
            ]
        else:
            lines = [f"Absurd schema already at {self.version} in {self.database}"]
        lines += [f"Created queue {q!r}" for q in self.queues_created]
        lines += [f"Queue {q!r} already exists" for q in self.queues_existing]
        if self.own_migrations:
            lines.append(f"Applied {OWN_SCHEMA} migrations: {', '.join(self.own_migrations)}")
        return lines


def validate_queue_name(queue_name: str) -> str:
    """Return `queue_name` if Absurd accepts it, else raise `QueueNameError`."""
    if not queue_name:
        raise QueueNameError("Queue name must not be empty.")
    size = len(queue_name.encode("utf-8"))
    if size > MAX_QUEUE_NAME_BYTES:
        raise QueueNameError(
            f"Queue name {queue_name[:20]!r}... is {size} bytes long; Absurd allows at most "
            f"{MAX_QUEUE_NAME_BYTES} bytes (UTF-8). Use a shorter name."
        )
    return queue_name


def _too_new(current: str, where: str) -> SchemaVersionError:
    return SchemaVersionError(
        f"The Absurd schema in {where} is version {current}, newer than {ABSURD_SCHEMA_VERSION} bundled with "
        f"absurdctl {ABSURD_SCHEMA_VERSION}; upgrade pydantic-ai-absurd/absurdctl (downgrades are not supported)."
    )


def _plan_migrations(current: str, where: str) -> list[tuple[str, str]]:
    """Return `(file name, sql)` pairs taking `current` to the bundled version (absurdctl's path rule)."""
    path = _resolve_migration_path(current, ABSURD_SCHEMA_VERSION, _discover_bundled_migrations())
    if path is None:  # pragma: no cover - only for downgrades, which callers rule out first
        raise _too_new(current, where)
    return [(str(step["name"]), str(step["sql"])) for step in path]


def _install_absurd(conn: psycopg.Connection[Any], where: str) -> None:
    """Install the bundled Absurd schema in a database that has none."""
    if absurd_schema_exists_sync(conn) and queues_table_exists_sync(conn):
        raise SchemaVersionError(
            f"{where} has an Absurd schema without absurd.get_schema_version() (an old release); "
            "migrate it once with `absurdctl migrate --from VERSION`, then rerun."
        )
    # bytes: a query without parameters is sent as-is (no %-placeholder parsing).
    try:
        conn.execute(absurdctl.BUNDLED_SCHEMA_SQL.encode())
    except psycopg.Error as exc:
        raise SchemaInstallError(
            f"Installing the Absurd schema {ABSURD_SCHEMA_VERSION} in {where} failed: {one_line(exc)} "
            "(nothing was changed; connect as a role that may create schemas, e.g. the database owner)."
        ) from exc


def _migrate_absurd(conn: psycopg.Connection[Any], where: str, current: str) -> list[str]:
    """Migrate Absurd's schema from `current` to the bundled version; return the migrations applied."""
    # Unlike `absurdctl migrate`, migrations that do not themselves redefine
    # get_schema_version() ("legacy" files such as 0.3.0-0.4.0) are applied without an explicit
    # --from: our starting version comes from get_schema_version() itself, and the final
    # version is verified below.
    applied: list[str] = []
    for name, sql in _plan_migrations(current, where):
        try:
            conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise SchemaVersionError(
                f"Migration {name} of the Absurd schema in {where} (from {current}) failed: "
                f"{one_line(exc)} (nothing was changed; is the recorded version {current} right?)."
            ) from exc
        applied.append(name)
    after = schema_version_sync(conn)
    if after != ABSURD_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"Migrating the Absurd schema in {where} from {current} left version {after or 'unknown'} "
            f"instead of {ABSURD_SCHEMA_VERSION}; migrate manually with `absurdctl migrate`."
        )
    return applied


def _bring_up_to_date(
    conn: psycopg.Connection[Any], where: str, current: str | None, migrate: bool
) -> tuple[Action, list[str]]:
    """Install or migrate Absurd's schema as needed; return what was done and the migrations applied."""
    if current is None:
        _install_absurd(conn, where)
        return "installed", []
    direction = _compare_versions(current, ABSURD_SCHEMA_VERSION)
    if direction > 0:
        raise _too_new(current, where)
    if direction == 0:
        return "up_to_date", []
    if not migrate:
        raise SchemaVersionError(
            f"The Absurd schema in {where} is version {current}, older than {ABSURD_SCHEMA_VERSION}; "
            "run `pydantic-ai-absurd init` (or setup()) to migrate it."
        )
    return "migrated", _migrate_absurd(conn, where, current)


def _setup_in_transaction(
    conn: psycopg.Connection[Any], where: str, queues: Sequence[str], migrate: bool
) -> SchemaInfo:
    conn.execute("select pg_advisory_xact_lock(%s)", (_SETUP_LOCK_KEY,))
    current = schema_version_sync(conn)
    action, applied = _bring_up_to_date(conn, where, current, migrate)
    created: list[str] = []
    existing: list[str] = []
    for queue in queues:
        if queue_exists_sync(conn, queue):
            existing.append(queue)
        else:
            create_queue_on(conn, queue)
            created.append(queue)
    return SchemaInfo(
        database=where,
        version=ABSURD_SCHEMA_VERSION,
        action=action,
        previous_version=current,
        migrations=tuple(applied),
        queues_created=tuple(created),
        queues_existing=tuple(existing),
        own_migrations=tuple(apply_own_migrations(conn, where)),
    )


def setup_sync(dsn: str | None = None, *, queues: Sequence[str] = (), migrate: bool = True) -> SchemaInfo:
    """Blocking version of `setup()`."""
    if isinstance(queues, str):
        queues = [queues]
    queues = [validate_queue_name(q) for q in queues]
    dsn = resolve_dsn(dsn)
    where = redact_dsn(dsn)
    with connect(dsn) as conn, conn.transaction():
        return _setup_in_transaction(conn, where, queues, migrate)


async def setup(dsn: str | None = None, *, queues: Sequence[str] = (), migrate: bool = True) -> SchemaInfo:
    """Install or migrate Absurd's schema in a database and create queues; idempotent and concurrency-safe.

    Args:
        dsn: connection string; default `ABSURD_DATABASE_URL`, then `PGDATABASE`, then
            `postgresql://localhost/absurd`.
        queues: queue names to create if missing (each at most 57 bytes).
        migrate: when `False`, an older installed schema raises `SchemaVersionError` instead of
            being migrated.

    Raises:
        DatabaseConnectionError: the database cannot be reached or refuses the connection.
        SchemaVersionError: the installed schema is newer than the bundled one, or cannot be migrated.
        QueueNameError: a queue name is empty or too long.
    """
    # One implementation: the blocking one, in a thread (setup runs once at start-up).
    return await asyncio.to_thread(setup_sync, dsn, queues=queues, migrate=migrate)


def _check_version(version: str | None, where: str) -> str:
    if version is None:
        raise SchemaNotInstalledError(
            f"The Absurd schema is not installed in {where}: run `pydantic-ai-absurd init --database ...` "
            "(or `await pydantic_ai_absurd.setup(...)`)."
        )
    direction = _compare_versions(version, ABSURD_SCHEMA_VERSION)
    if direction > 0:
        raise _too_new(version, where)
    if direction < 0:
        raise SchemaVersionError(
            f"The Absurd schema in {where} is version {version}, older than {ABSURD_SCHEMA_VERSION}; "
            "run `pydantic-ai-absurd init` (or setup()) to migrate it."
        )
    return version


def check_schema_sync(dsn: str | None = None) -> str:
    """Blocking version of `check_schema()`."""
    dsn = resolve_dsn(dsn)
    with connect(dsn, autocommit=True) as conn:
        return _check_version(schema_version_sync(conn), redact_dsn(dsn))


async def check_schema(dsn: str | None = None) -> str:
    """Return the installed schema version if it is exactly the bundled one.

    Raises `SchemaNotInstalledError` or `SchemaVersionError` otherwise (for worker start-up checks).
    """
    dsn = resolve_dsn(dsn)
    async with await connect_async(dsn, autocommit=True) as conn:
        return _check_version(await schema_version(conn), redact_dsn(dsn))


def _queue_not_found(queue_name: str, where: str) -> QueueNotFoundError:
    return queue_not_found(queue_name, _create_hint(queue_name), where=where)


def _create_hint(queue_name: str) -> str:
    return f"{create_queue_hint(queue_name)} (or setup(queues=[{queue_name!r}]))."


def ensure_queue_exists_sync(dsn: str | None, queue_name: str) -> None:
    """Blocking version of `ensure_queue_exists()` that takes a connection string."""
    validate_queue_name(queue_name)
    dsn = resolve_dsn(dsn)
    where = redact_dsn(dsn)
    with connect(dsn, autocommit=True) as conn:
        if schema_version_sync(conn) is None:
            _check_version(None, where)
        if not queue_exists_sync(conn, queue_name):
            raise _queue_not_found(queue_name, where)


async def ensure_queue_exists(conn_or_dsn: psycopg.AsyncConnection[Any] | str | None, queue_name: str) -> None:
    """Raise `QueueNotFoundError` (or `SchemaNotInstalledError`) unless `queue_name` exists.

    `conn_or_dsn` is an open async connection (used as is, not closed) or a connection string
    (`None`: the default resolution). Spawning into a missing queue otherwise fails deep inside
    Absurd's SQL with a less helpful error.
    """
    validate_queue_name(queue_name)
    if isinstance(conn_or_dsn, psycopg.AsyncConnection):
        await ensure_queue_on(conn_or_dsn, queue_name, connection_url(conn_or_dsn.info))
        return
    dsn = resolve_dsn(conn_or_dsn)
    async with await connect_async(dsn, autocommit=True) as conn:
        await ensure_queue_on(conn, queue_name, redact_dsn(dsn))


async def ensure_queue_on(conn: psycopg.AsyncConnection[Any], queue_name: str, where: str) -> None:
    """`ensure_queue_exists` on an open connection; errors name the database as `where` (a redacted URL)."""
    if not await has_schema_version(conn, with_queues=True):
        _check_version(None, where)
    await require_queue(conn, queue_name, _create_hint(queue_name), where=where)


def create_queue_sync(dsn: str | None, queue_name: str) -> bool:
    """Create `queue_name` if missing (schema must be installed); return whether it was created."""
    info = _queues_only(dsn, [queue_name])
    return bool(info)


def _queues_only(dsn: str | None, queues: Sequence[str]) -> tuple[str, ...]:
    queues = [validate_queue_name(q) for q in queues]
    dsn = resolve_dsn(dsn)
    where = redact_dsn(dsn)
    with connect(dsn) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_SETUP_LOCK_KEY,))
        _check_version(schema_version_sync(conn), where)
        created: list[str] = []
        for queue in queues:
            if not queue_exists_sync(conn, queue):
                create_queue_on(conn, queue)
                created.append(queue)
        return tuple(created)


def drop_queue_sync(dsn: str | None, queue_name: str) -> None:
    """Drop `queue_name` and all its tasks, runs, checkpoints and events (no-op if missing).

    In the same transaction, the queue's rows in this package's tables go too: its event logs, lost executions,
    task registrations, worker liveness rows and child-task links (`_tables.QUEUE_TABLES`).
    """
    dsn = resolve_dsn(dsn)
    with connect(dsn) as conn, conn.transaction():
        drop_queue_on(conn, queue_name)
        delete_queue_rows(conn, queue_name)
