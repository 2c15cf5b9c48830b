"""The CLI as a real process: one-line errors without traceback (also for a worker module that runs a program at
import), `dev` until a signal, a parser that imports little."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pydantic_ai_absurd.embedded import EmbeddedPostgres
from tests.helpers.infra import dsn_for_database, pid_alive, server_root

CLI = [sys.executable, "-c", "import sys; from pydantic_ai_absurd.cli import main; sys.exit(main())"]


def test_error_in_real_process_has_no_traceback(absurd_dsn: str) -> None:
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
    code = (
        "import sys; from pydantic_ai_absurd.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('pydantic_ai', 'pydantic_ai_absurd._agent') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]", completed.stdout


def test_module_calling_asyncio_run_at_import_is_one_line_exit_2(tmp_path: Path, absurd_dsn: str) -> None:
    (tmp_path / "eager.py").write_text(
        "import asyncio\n"
        "from absurd_sdk import AsyncAbsurd\n\n"
        "absurd = AsyncAbsurd(queue_name='agents')\n\n\n"
        "async def main():\n"
        "    pass\n\n\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [*CLI, "worker", "eager:absurd", "--dsn", absurd_dsn],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pydantic-ai-absurd: error: ")
    assert "asyncio.run(...)" in lines[0]
    assert 'if __name__ == "__main__":' in lines[0]
