"""Installing, migrating and checking the Absurd schema; queues; DSN resolution and its one-line errors."""

from __future__ import annotations

import asyncio
import uuid

import absurdctl  # pyright: ignore[reportMissingTypeStubs]
import psycopg
import pytest

from pydantic_ai_absurd import setup
from pydantic_ai_absurd._dsn import connection_error
from pydantic_ai_absurd.errors import (
    DatabaseConnectionError,
    QueueNameError,
    QueueNotFoundError,
    SchemaNotInstalledError,
    SchemaVersionError,
)
from pydantic_ai_absurd.schema import (
    ABSURD_SCHEMA_VERSION,
    check_schema,
    check_schema_sync,
    create_queue_sync,
    drop_queue_sync,
    ensure_queue_exists,
    ensure_queue_exists_sync,
    redact_dsn,
    resolve_dsn,
    setup_sync,
)
from tests.helpers.infra import dsn_for_database, fake_schema_version
from tests.helpers.sql import queue_names_sync


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_bundled_version_is_absurdctls() -> None:
    assert ABSURD_SCHEMA_VERSION == absurdctl.ABSURD_SCHEMA_TARGET_VERSION


def test_install_then_idempotent_rerun(empty_db: str) -> None:
    info = setup_sync(empty_db, queues=["alpha", "beta"])
    assert info.action == "installed"
    assert info.version == ABSURD_SCHEMA_VERSION
    assert info.previous_version is None
    assert info.queues_created == ("alpha", "beta")
    assert info.describe()[0].startswith(f"Installed Absurd schema {ABSURD_SCHEMA_VERSION}")
    assert check_schema_sync(empty_db) == ABSURD_SCHEMA_VERSION
    assert queue_names_sync(empty_db) == {"alpha", "beta"}

    again = setup_sync(empty_db, queues=["alpha", "gamma"])
    assert again.action == "up_to_date"
    assert again.queues_created == ("gamma",)
    assert again.queues_existing == ("alpha",)
    assert again.describe() == [
        f"Absurd schema already at {ABSURD_SCHEMA_VERSION} in {redact_dsn(empty_db)}",
        "Created queue 'gamma'",
        "Queue 'alpha' already exists",
    ]
    assert queue_names_sync(empty_db) == {"alpha", "beta", "gamma"}


async def test_async_setup_and_check(empty_db: str) -> None:
    info = await setup(empty_db, queues=["q"])
    assert info.action == "installed"
    assert await check_schema(empty_db) == ABSURD_SCHEMA_VERSION
    await ensure_queue_exists(empty_db, "q")
    async with await psycopg.AsyncConnection.connect(empty_db) as conn:
        await ensure_queue_exists(conn, "q")
        with pytest.raises(QueueNotFoundError, match="'nope' does not exist"):
            await ensure_queue_exists(conn, "nope")
        assert not conn.closed


def test_migrates_from_older_version(empty_db: str) -> None:
    # No older full absurd.sql ships offline (absurdctl bundles only the current one and the
    # migrations), so an older install is simulated: a current schema whose
    # get_schema_version() says 0.5.0, with the object the 0.5.0 -> 0.5.1 migration adds (the
    # partial index t_<queue>_ci on existing queues) removed. The migration must recreate it.
    setup_sync(empty_db, queues=["old"])
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("drop index absurd.t_old_ci")
    fake_schema_version(empty_db, "0.5.0")
    with pytest.raises(SchemaVersionError, match="older than"):
        check_schema_sync(empty_db)
    with pytest.raises(SchemaVersionError, match="older than"):
        setup_sync(empty_db, migrate=False)

    info = setup_sync(empty_db)
    assert info.action == "migrated"
    assert info.previous_version == "0.5.0"
    assert info.migrations == ("0.5.0-0.5.1.sql",)
    assert check_schema_sync(empty_db) == ABSURD_SCHEMA_VERSION
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select to_regclass('absurd.t_old_ci')").fetchone() == ("absurd.t_old_ci",)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("0.4.0", ("0.4.0-0.5.0.sql", "0.5.0-0.5.1.sql")),
        # 0.3.0-0.4.0.sql does not redefine get_schema_version(); the chain still ends at the target.
        ("0.3.0", ("0.3.0-0.4.0.sql", "0.4.0-0.5.0.sql", "0.5.0-0.5.1.sql")),
    ],
)
def test_migration_path_follows_bundled_file_names(empty_db: str, start: str, expected: tuple[str, ...]) -> None:
    # Simulated as above: these migrations are re-runnable on a current schema.
    setup_sync(empty_db, queues=["q"])
    fake_schema_version(empty_db, start)
    info = setup_sync(empty_db, queues=["q"])
    assert (info.action, info.migrations) == ("migrated", expected)
    assert check_schema_sync(empty_db) == ABSURD_SCHEMA_VERSION


def test_failed_migration_is_one_line_and_rolls_back(empty_db: str) -> None:
    # The 0.0.x migrations create functions that exist in a current schema, so the chain fails here.
    setup_sync(empty_db)
    fake_schema_version(empty_db, "0.0.3")
    with pytest.raises(SchemaVersionError) as err:
        setup_sync(empty_db)
    assert "Migration 0.0." in _one_line(err.value)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select absurd.get_schema_version()").fetchone() == ("0.0.3",)


def test_refuses_newer_schema(empty_db: str) -> None:
    setup_sync(empty_db)
    fake_schema_version(empty_db, "99.0.0")
    for call in (lambda: setup_sync(empty_db), lambda: check_schema_sync(empty_db)):
        with pytest.raises(SchemaVersionError) as err:
            call()
        message = _one_line(err.value)
        assert "99.0.0, newer than" in message
        assert "upgrade pydantic-ai-absurd" in message
    with psycopg.connect(empty_db) as conn:  # untouched
        assert conn.execute("select absurd.get_schema_version()").fetchone() == ("99.0.0",)


def test_schema_without_version_function_is_refused(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create schema absurd; create table absurd.queues (queue_name text primary key)")
    with pytest.raises(SchemaVersionError, match="absurdctl migrate --from VERSION"):
        setup_sync(empty_db)


def test_missing_schema_errors(empty_db: str) -> None:
    with pytest.raises(SchemaNotInstalledError) as err:
        check_schema_sync(empty_db)
    assert "pydantic-ai-absurd init" in _one_line(err.value)
    with pytest.raises(SchemaNotInstalledError):
        ensure_queue_exists_sync(empty_db, "q")
    with pytest.raises(SchemaNotInstalledError):
        asyncio.run(ensure_queue_exists(empty_db, "q"))
    with pytest.raises(SchemaNotInstalledError):
        create_queue_sync(empty_db, "q")


def test_missing_queue_error(absurd_dsn: str, absurd_queue: str) -> None:
    ensure_queue_exists_sync(absurd_dsn, absurd_queue)
    with pytest.raises(QueueNotFoundError) as err:
        ensure_queue_exists_sync(absurd_dsn, "no_such_queue")
    assert "init --queue no_such_queue" in _one_line(err.value)


def test_create_and_drop_queue(absurd_dsn: str) -> None:
    name = f"tmp_{uuid.uuid4().hex[:10]}"
    assert create_queue_sync(absurd_dsn, name) is True
    assert create_queue_sync(absurd_dsn, name) is False
    drop_queue_sync(absurd_dsn, name)
    with pytest.raises(QueueNotFoundError):
        ensure_queue_exists_sync(absurd_dsn, name)


def test_dropping_a_queue_deletes_its_rows_in_our_tables(absurd_dsn: str, absurd_queue: str) -> None:
    name = f"tmp_{uuid.uuid4().hex[:10]}"
    create_queue_sync(absurd_dsn, name)
    link = (
        "insert into pydantic_ai_absurd.child_tasks (child_queue, child_task_id, parent_queue, parent_task_id,"
        " task_name, call_site, request_key, event_name) values (%s, gen_random_uuid(), %s, gen_random_uuid(),"
        " 'kid', 'site', 'key', 'event')"
    )
    liveness = "insert into pydantic_ai_absurd.worker_liveness (identity, queue_name) values (%s, %s)"
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        for child_queue, parent_queue in ((name, absurd_queue), (absurd_queue, name), (absurd_queue, absurd_queue)):
            conn.execute(link, (child_queue, parent_queue))
        conn.execute(liveness, (f"{name}-worker", name))
        conn.execute(liveness, (f"{absurd_queue}-worker", absurd_queue))
        drop_queue_sync(absurd_dsn, name)
        left = conn.execute(
            "select child_queue, parent_queue from pydantic_ai_absurd.child_tasks where %(q)s in (child_queue, parent_queue)"
            " union all select queue_name, null from pydantic_ai_absurd.worker_liveness where queue_name in (%(q)s, %(other)s)",
            {"q": name, "other": absurd_queue},
        ).fetchall()
    assert left == [(absurd_queue, None)]  # the dropped queue's links (either side) and liveness row went
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        kept = conn.execute(
            "select count(*) from pydantic_ai_absurd.child_tasks where child_queue = %s and parent_queue = %s",
            (absurd_queue, absurd_queue),
        ).fetchone()
    assert kept == (1,)


@pytest.mark.parametrize("name", ["", "x" * 58, "é" * 29])
def test_queue_name_errors_before_connecting(name: str) -> None:
    # An unreachable DSN: the name must be rejected first.
    with pytest.raises(QueueNameError) as err:
        setup_sync("postgresql://nobody@127.0.0.1:1/x", queues=[name])
    _one_line(err.value)
    assert isinstance(err.value, ValueError)


def test_queue_name_of_57_bytes_is_accepted(empty_db: str) -> None:
    name = "q" * 57
    assert setup_sync(empty_db, queues=[name]).queues_created == (name,)


def test_missing_database(absurd_dsn: str) -> None:
    with pytest.raises(DatabaseConnectionError) as err:
        setup_sync(dsn_for_database(absurd_dsn, "paa_does_not_exist"))
    assert err.value.reason == "missing_database"
    assert 'Database "paa_does_not_exist" does not exist' in _one_line(err.value)


def test_missing_role(absurd_dsn: str) -> None:
    from psycopg.conninfo import make_conninfo

    with pytest.raises(DatabaseConnectionError) as err:
        check_schema_sync(make_conninfo(absurd_dsn, user="paa_no_such_role"))
    assert err.value.reason == "missing_role"
    _one_line(err.value)


def test_unreachable_server() -> None:
    with pytest.raises(DatabaseConnectionError) as err:
        setup_sync("postgresql://postgres:secret@127.0.0.1:1/absurd")
    assert err.value.reason == "unreachable"
    message = _one_line(err.value)
    assert "Cannot reach Postgres at postgresql://postgres:***@127.0.0.1:1/absurd" in message
    assert "secret" not in message


def test_invalid_dsn() -> None:
    with pytest.raises(DatabaseConnectionError) as err:
        check_schema_sync("this is not a dsn")
    assert err.value.reason == "invalid_dsn"
    _one_line(err.value)


def test_auth_message_mapping() -> None:
    # The real wrong-password case runs against a password-protected embedded server in
    # test_embedded.py; this pins the text mapping for the server's other phrasing.
    err = connection_error(
        psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "bob"'),
        "postgresql://bob:hunter2@db/x",
    )
    assert err.reason == "auth"
    assert "hunter2" not in str(err)


def test_resolve_dsn_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABSURD_DATABASE_URL", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert resolve_dsn() == "postgresql://localhost/absurd"
    monkeypatch.setenv("PGDATABASE", "pgdb")
    assert resolve_dsn() == "pgdb"
    monkeypatch.setenv("ABSURD_DATABASE_URL", "postgresql://env/db")
    assert resolve_dsn() == "postgresql://env/db"
    assert resolve_dsn("postgresql://explicit/db") == "postgresql://explicit/db"


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://u:pw@h:5/d", "postgresql://u:***@h:5/d"),
        ("postgresql://u@h/d?password=pw&sslmode=require", "postgresql://u@h/d?password=***&sslmode=require"),
        ("host=h user=u password='p w' dbname=d", "host=h user=u password=*** dbname=d"),
        ("postgresql://h/d", "postgresql://h/d"),
    ],
)
def test_redact_dsn(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted
