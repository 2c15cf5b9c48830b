from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pydantic_ai_absurd.cli import build_parser, main
from pydantic_ai_absurd.embedded import EmbeddedPostgres
from pydantic_ai_absurd.schema import ABSURD_SCHEMA_VERSION, redact_dsn
from tests.helpers.infra import fresh_database, pid_alive, server_root

CLI = [sys.executable, "-c", "import sys; from pydantic_ai_absurd.cli import main; sys.exit(main())"]


@pytest.fixture
def empty_db(absurd_dsn: str) -> Iterator[str]:
    with fresh_database(absurd_dsn) as dsn:
        yield dsn


def test_init_prints_one_line_per_action(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--database", empty_db, "--queue", "a", "-q", "b"]) == 0
    where = redact_dsn(empty_db)
    from pydantic_ai_absurd.schema._tables import own_migrations

    migrations = ", ".join(name for name, _ in own_migrations())
    assert capsys.readouterr().out.splitlines() == [
        f"Installed Absurd schema {ABSURD_SCHEMA_VERSION} in {where}",
        "Created queue 'a'",
        "Created queue 'b'",
        f"Applied pydantic_ai_absurd migrations: {migrations}",
    ]
    assert main(["init", "--database", empty_db, "--queue", "a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Absurd schema already at {ABSURD_SCHEMA_VERSION} in {where}",
        "Queue 'a' already exists",
    ]


def test_init_uses_env_dsn(empty_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ABSURD_DATABASE_URL", empty_db)
    assert main(["init"]) == 0
    assert "Installed Absurd schema" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["init", "-d", "postgresql://postgres@127.0.0.1:1/absurd"], "Cannot reach Postgres at"),
        (["init", "-d", "postgresql://postgres@127.0.0.1:1/absurd", "-q", "x" * 60], "at most 57 bytes"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pydantic-ai-absurd: error: ")
    assert expected in lines[0]


def test_error_in_real_process_has_no_traceback(absurd_dsn: str) -> None:
    from tests.helpers.infra import dsn_for_database

    result = subprocess.run(
        [*CLI, "init", "--database", dsn_for_database(absurd_dsn, "paa_missing_db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert 'Database "paa_missing_db" does not exist' in result.stderr


def test_parser_has_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["dev", "-q", "x", "--data-dir", "/tmp/x"])
    assert args.queue == ["x"]
    with pytest.raises(SystemExit):
        parser.parse_args([])


def _start_dev(root: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [*CLI, "dev", "--data-dir", str(root), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Press Ctrl-C"):
            return proc, lines
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"dev did not come up: {lines} {err}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dev_serves_until_signal_then_stops_server(sig: signal.Signals) -> None:
    with server_root() as root:
        proc, lines = _start_dev(root, "--queue", "jobs", "-q", "other")
        try:
            dsn = next(line.removeprefix("DSN: ") for line in lines if line.startswith("DSN: "))
            assert f"export ABSURD_DATABASE_URL='{dsn}'" in lines
            assert lines[0].startswith(f"Started embedded Postgres in {root}")
            assert "Created queue 'jobs'" in lines
            with psycopg.connect(dsn) as conn:
                queues = {r[0] for r in conn.execute("select queue_name from absurd.queues").fetchall()}
            assert queues == {"jobs", "other"}
            pid = EmbeddedPostgres(root).pid
            assert pid is not None
        finally:
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Stopped embedded Postgres." in out
        assert not EmbeddedPostgres(root).is_running()
        assert not pid_alive(pid)


def test_the_cli_parser_does_not_import_pydantic_ai() -> None:
    """`pydantic-ai-absurd init --help` stays fast: subcommands import their layers only when they run."""
    import subprocess
    import sys

    code = (
        "import sys; from pydantic_ai_absurd.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('pydantic_ai', 'pydantic_ai_absurd._agent') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]", completed.stdout
