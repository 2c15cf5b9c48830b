"""The CLI's options and errors: one database option everywhere, --version, usage of the subcommand,
ranges, a database without the schema, `cancel`, and the worker's error naming the URL given."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd import Inbox
from pydantic_ai_absurd.cli import build_parser, main
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.apps.cli_hostile_app import build

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"
TASK = "01900000-0000-7000-8000-000000000000"
COMMANDS = {
    "init": [],
    "worker": ["m:a"],
    "inspect": [TASK],
    "tasks": [],
    "cancel": [TASK],
    "verify": ["m:a"],
    "fork": [TASK, "--at", "0"],
    "inbox": [],
    "approve": ["T"],
    "deny": ["T", "--reason", "r"],
    "answer": ["T", "--results", "{}"],
}
"""Every subcommand that uses a database (not `dev`, which runs its own), with its required arguments."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, expected: str) -> None:
    assert err.count("\n") == 1 and err.startswith("pydantic-ai-absurd: error: ") and expected in err, err


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("option", ["--database", "-d", "--dsn"])
def test_every_command_takes_the_database_option(command: str, option: str) -> None:
    args = build_parser().parse_args([command, *COMMANDS[command], option, "postgresql://h/db"])
    assert args.database == "postgresql://h/db"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_database_and_hides_the_alias(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--database DSN, -d DSN" in out and "--dsn" not in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"pydantic-ai-absurd {version('pydantic-ai-absurd')}"


@pytest.mark.parametrize("command", ["tasks", "inspect", "worker", "inbox", "cancel"])
def test_a_wrong_flag_prints_the_usage_of_the_subcommand(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, *COMMANDS[command], "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: pydantic-ai-absurd {command} ")
    assert f"pydantic-ai-absurd {command}: error: unrecognized arguments: --bogus" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tasks", "--limit", "0"], "--limit must be at least 1, not 0."),
        (["tasks", "--limit", "-1"], "--limit must be at least 1, not -1."),
        (["inbox", "--limit", "0"], "--limit must be at least 1, not 0."),
        (["worker", "m:a", "--concurrency", "0"], "--concurrency must be at least 1, not 0."),
        (["worker", "m:a", "--poll-interval", "0"], "--poll-interval must be more than 0, not 0."),
        (["verify", "m:a", "--timeout", "-1"], "--timeout must be more than 0, not -1."),
        (["fork", TASK, "--at", "-2"], "--at must be at least 0, not -2."),
        (["worker", "m:a", "--health-file", "/nonexistent/dir/h"], "its directory does not exist"),
    ],
)
def test_out_of_range_values_are_refused_before_connecting(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *argv, "-d", UNREACHABLE)
    assert code == 2 and out == ""
    one_line_error(err, expected)


SCHEMA_COMMANDS = ["inspect", "tasks", "cancel", "fork", "inbox", "approve", "deny", "answer"]


@pytest.mark.parametrize("command", SCHEMA_COMMANDS)
def test_a_database_without_the_schema_is_one_line(
    command: str, empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, command, *COMMANDS[command], "-d", empty_db)
    assert code == 2 and out == ""
    one_line_error(err, "The Absurd schema is not installed in ")
    assert "run `pydantic-ai-absurd init" in err


def test_verify_on_a_database_without_the_schema_is_one_line(
    empty_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOSTILE_DSN", empty_db)
    monkeypatch.setenv("HOSTILE_QUEUE", "default")
    sys.modules.pop("tests.helpers.apps.cli_hostile_app", None)
    code, _, err = run(capsys, "verify", "tests.helpers.apps.cli_hostile_app:absurd")
    assert code == 2
    one_line_error(err, "The Absurd schema is not installed in ")
    code, _, err = run(capsys, "verify", "tests.helpers.apps.cli_hostile_app:absurd", "-d", empty_db)
    one_line_error(err, "The Absurd schema is not installed in ")


def test_the_worker_names_the_url_given_with_the_password_masked(
    empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(empty_db)
    where = f"host={parts['host']}&port={parts['port']}"  # a TCP host or a socket directory
    with_password = f"postgresql://{parts['user']}:s3cret@/{parts['dbname']}?{where}"
    code, _, err = run(capsys, "worker", "tests.helpers.apps.worker_app:absurd", "--database", with_password)
    assert code == 2
    masked = with_password.replace(":s3cret@", ":***@")
    one_line_error(err, f"The Absurd schema is not installed in {masked}: run `pydantic-ai-absurd init")
    assert "s3cret" not in err and "sslcertmode" not in err


def test_a_wrong_worker_target_has_the_right_article(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "worker", "tests.helpers.apps.cli_hostile_app:inbox")
    assert code == 2
    one_line_error(err, "is an Inbox, not an absurd_sdk.AsyncAbsurd")
    code, _, err = run(capsys, "worker", "tests.helpers.apps.cli_hostile_app:RAW")
    one_line_error(err, "is a tuple, not")


def test_verify_export_to_an_unwritable_path_is_one_line(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOSTILE_DSN", absurd_dsn)
    monkeypatch.setenv("HOSTILE_QUEUE", absurd_queue)
    sys.modules.pop("tests.helpers.apps.cli_hostile_app", None)
    code, _, err = run(
        capsys, "verify", "tests.helpers.apps.cli_hostile_app:absurd", "--export", "/nonexistent/dir/x.json"
    )
    assert code == 2
    one_line_error(err, "Cannot write recorded tasks to '/nonexistent/dir/x.json': No such file or directory.")


def test_verify_reads_the_recorded_tasks_of_database(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def record() -> None:
        absurd = build(absurd_dsn, absurd_queue)
        await absurd.spawn("hostile", {"prompt": "p"})
        await run_queued(absurd)
        await absurd.close()

    asyncio.run(record())
    # The target's client points nowhere: the records come from --database.
    monkeypatch.setenv("HOSTILE_DSN", UNREACHABLE)
    monkeypatch.setenv("HOSTILE_QUEUE", "elsewhere")
    sys.modules.pop("tests.helpers.apps.cli_hostile_app", None)
    code, out, _ = run(
        capsys, "verify", "tests.helpers.apps.cli_hostile_app:absurd", "-d", absurd_dsn, "-q", absurd_queue
    )
    assert code == 0 and "1 task(s) verified: 1 ok" in out


async def test_cancel_a_waiting_task(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    absurd = build(absurd_dsn, absurd_queue)
    spawned = await absurd.spawn("hostile", {"prompt": "p"})
    await run_queued(absurd)
    await absurd.close()
    task_id = str(spawned["task_id"])
    inbox = Inbox(absurd_client)
    [request] = await inbox.pending(task_id=task_id)

    async def cli(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run, capsys, *argv)

    code, out, _ = await cli("cancel", task_id, "-d", absurd_dsn)  # every queue searched
    assert code == 0
    assert out.strip() == f"Cancelled task {task_id} (hostile, was sleeping) on queue {absurd_queue}."
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "cancelled"
    assert await inbox.pending(task_id=task_id) == []
    code, out, _ = await cli("inbox", "-d", absurd_dsn, "-q", absurd_queue, "--json")
    assert json.loads(out) == []
    code, _, err = await cli("approve", request.token, "-d", absurd_dsn)
    assert code == 2 and err.count("\n") == 1
    code, out, _ = await cli("cancel", task_id, "-d", absurd_dsn, "-q", absurd_queue)
    assert code == 0 and "already cancelled; nothing to cancel" in out

    code, _, err = await cli("cancel", TASK, "-d", absurd_dsn)
    one_line_error(err, f"No task {TASK} in any queue")
    assert code == 2
    code, _, err = await cli("cancel", "nope", "-d", absurd_dsn)
    one_line_error(err, "'nope' is not a task id")
    code, _, err = await cli("cancel", TASK, "-d", absurd_dsn, "-q", "no_such_queue_here")
    one_line_error(err, "Queue 'no_such_queue_here' does not exist")


async def test_a_missing_queue_on_a_connection_names_its_url(absurd_dsn: str) -> None:
    from urllib.parse import quote

    import psycopg

    from pydantic_ai_absurd.errors import QueueNotFoundError
    from pydantic_ai_absurd.schema import ensure_queue_exists

    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        info = conn.info
        user, host, dbname = (quote(part, safe="") for part in (info.user, info.host, info.dbname))
        url = f"postgresql://{user}@{host}:{info.port}/{dbname}"  # a socket directory as host is %-quoted
        with pytest.raises(QueueNotFoundError) as raised:
            await ensure_queue_exists(conn, "no_such_queue_here")
    message = str(raised.value)
    assert f"in {url}: " in message
    assert "sslcertmode" not in message and "dbname=" not in message
