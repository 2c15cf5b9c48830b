"""Processes the system tests start, watch and kill: one class for any of them, one pool (`workers` fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .paths import APPS, ROOT
from .polling import WAIT, wait_until

P = TypeVar("P", bound="Process")


def app_command(name: str, *args: str) -> list[str]:
    """`python -m tests.helpers.apps.<name> ARGS...` (run from the repository, so `tests` is importable)."""
    return [sys.executable, "-m", f"tests.helpers.apps.{name}", *args]


def state_lines(state: Path, name: str) -> list[str]:
    """The words an app process appended to `state/name` (its record of what ran), empty before the first."""
    path = state / name
    return path.read_text().split() if path.exists() else []


class Process:
    """A subprocess run from the repository, its output (stdout and stderr) in `log`."""

    def __init__(self, args: list[str], log: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            args, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit code, once the process has exited by itself."""
        await wait_until(lambda: self.proc.poll() is not None, timeout, message=self._not_exited)
        return self.proc.returncode

    def _not_exited(self) -> str:
        return f"process {self.pid} did not exit:\n{self.output()}"

    def close(self) -> None:
        """Kill the process if it still runs (resuming it first if a test stopped it)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self._out.close()


class WorkerProcess(Process):
    """A worker running `tests/helpers/apps/worker_app.py` (settings as `WORKER_<NAME>` environment variables)."""

    def __init__(self, dsn: str, queue: str, log: Path, *, command: list[str] | None = None, **settings: Any) -> None:
        env = {"WORKER_DSN": dsn, "WORKER_QUEUE": queue}
        env.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.health_log = settings.get("health_log")
        super().__init__(command or [sys.executable, str(APPS / "worker_app.py")], log, env=env)

    def health(self) -> dict[str, Any]:
        """The worker's last `WorkerHealth` (needs `health_log=PATH`); empty before its first poll."""
        assert self.health_log is not None
        try:
            return json.loads(Path(self.health_log).read_text())
        except FileNotFoundError:
            return {}

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit code; a worker that hangs is asked where it is (SIGUSR1 dumps its stacks) before failing."""
        with contextlib.suppress(AssertionError):
            return await super().wait_exit(timeout)
        self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: "=== end of stacks ===" in self.output(), 2)
        raise AssertionError(self._not_exited())


class Workers:
    """The processes one test started (the `workers` fixture): each logs to its own file, all killed at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def app(self, name: str, *args: str, env: Mapping[str, str] | None = None, log: str | None = None) -> Process:
        """Start `python -m tests.helpers.apps.<name> ARGS...`."""
        return self._add(Process(app_command(name, *args), self._log(log or name), env=env))

    def worker(
        self, dsn: str, queue: str, *, command: list[str] | None = None, log: str | None = None, **settings: Any
    ) -> WorkerProcess:
        """Start a `worker_app` worker (or `command`, e.g. the CLI, with the same settings)."""
        return self._add(WorkerProcess(dsn, queue, self._log(log or "worker"), command=command, **settings))

    def _log(self, name: str) -> Path:
        return self.directory / f"{name}-{len(self.started)}.log"

    def _add(self, process: P) -> P:
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            process.close()
