"""A real PgBouncer in transaction pooling mode, started by the tests in front of the test session's Postgres.

Debian's `pgbouncer` package (installed by `.ci/run`). The fixture writes its own config and auth file in a
temporary directory, listens on a free TCP port of 127.0.0.1 and forwards to the test database, over TCP or
the unix socket the DSN names (the embedded server listens on a socket only). PgBouncer refuses to run as
root: as root it is started with `-u nobody` and its directory is opened to that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["PGBOUNCER_MISSING", "pgbouncer_binary", "require_pgbouncer", "running_pgbouncer"]

PGBOUNCER_MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
"""The skip reason where PgBouncer cannot be found and `CI` is unset."""


def require_pgbouncer() -> None:
    """Skip the calling test where pgbouncer is not installed and `CI` is unset; under CI, fail it."""
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):
            pytest.fail(PGBOUNCER_MISSING, pytrace=False)
        pytest.skip(PGBOUNCER_MISSING)


def pgbouncer_binary() -> str | None:
    """Path of the `pgbouncer` executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(directory: Path, dsn: str, port: int, pool_size: int) -> Path:
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "/var/run/postgresql")
    backend = f"host={host} port={params.get('port') or 5432}"
    if params.get("password"):
        backend += f" password={params['password']}"
    user = str(params.get("user") or os.environ.get("USER") or "postgres")
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = {backend}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 1000\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    return config


def _pooled_dsn(dsn: str, port: int) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if k not in ("host", "hostaddr", "port")}
    return make_conninfo(**{**params, "host": "127.0.0.1", "port": str(port)})


def _wait_until_ready(proc: subprocess.Popen[bytes], dsn: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {_tail(log)}")
        try:
            with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not answer on {dsn}: {err}; log: {_tail(log)}") from err
            time.sleep(0.05)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(log.read_text().splitlines()[-5:])
    return "(no log)"


@contextlib.contextmanager
def running_pgbouncer(dsn: str, *, pool_size: int = 20) -> Iterator[str]:
    """Run PgBouncer (transaction pooling) in front of `dsn` for the block; yield the DSN through it."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError(PGBOUNCER_MISSING)
    directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    try:
        port = _free_port()
        config = _config(directory, dsn, port, pool_size)
        command = [binary, "-q", str(config)]
        if os.geteuid() == 0:  # pgbouncer refuses root: run it as nobody, who must read and write its directory
            directory.chmod(0o777)
            for path in directory.iterdir():
                path.chmod(0o644)
            command[1:1] = ["-u", "nobody"]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            pooled = _pooled_dsn(dsn, port)
            _wait_until_ready(proc, pooled, directory / "pgbouncer.log")
            yield pooled
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
