"""Helpers for the worker tests: run a `Worker` in-process, poll Postgres, read Absurd's tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.worker import Worker, WorkerConfig

from .paths import APPS, ROOT
from .polling import WAIT


@contextlib.asynccontextmanager
async def running_worker(absurd: AsyncAbsurd, **config: Any) -> AsyncGenerator[Worker]:
    """Run a `Worker` (no signal handlers, fast polling) for the body; stop and drain it afterwards."""
    config.setdefault("handle_signals", False)
    config.setdefault("poll_interval", 0.05)
    config.setdefault("drain_timeout", 5.0)
    worker = Worker(absurd, WorkerConfig(**config))
    job = asyncio.ensure_future(worker.run())
    try:
        yield worker
    finally:
        if not worker.health.stopping:
            worker.request_stop()
        await asyncio.wait_for(job, timeout=WAIT)


APP = APPS / "worker_app.py"


class WorkerProcess:
    """A worker subprocess running `tests/helpers/apps/worker_app.py` (settings as `WORKER_<NAME>` environment variables)."""

    def __init__(self, dsn: str, queue: str, log: Path, *, command: list[str] | None = None, **settings: Any) -> None:
        env = {**os.environ, "WORKER_DSN": dsn, "WORKER_QUEUE": queue}
        env.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = log
        self.health_log = settings.get("health_log")
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            command or [sys.executable, str(APP)], env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    def health(self) -> dict[str, Any]:
        """The worker's last `WorkerHealth` (needs `health_log=PATH`); empty before its first poll."""
        assert self.health_log is not None
        try:
            return json.loads(Path(self.health_log).read_text())
        except FileNotFoundError:
            return {}

    async def wait_exit(self) -> int:
        for _ in range(int(WAIT / 0.05)):
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        self.proc.send_signal(signal.SIGUSR1)  # ask the hung worker where it is
        for _ in range(40):
            if "=== end of stacks ===" in self.output():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {self.pid} did not exit:\n{self.output()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


async def effect_events(dsn: str, queue: str, task_id: str) -> list[tuple[str, str, int]]:
    """(step, start|end, pid) rows `worker_app`'s step bodies recorded for the task, in order."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select step, event, pid from worker_effects where queue = %s and task_id = %s order by at",
            (queue, str(task_id)),
        )
        return [(str(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]


def count_events(events: list[tuple[str, str, int]], step: str, event: str) -> int:
    """How often `step` recorded `event`."""
    return sum(1 for s, e, _ in events if (s, e) == (step, event))


async def seen_event(dsn: str, queue: str, task_id: str, step: str, event: str) -> bool:
    """Whether `step` of the task recorded `event` at least once."""
    return count_events(await effect_events(dsn, queue, task_id), step, event) > 0


async def open_gate(dsn: str, queue: str, task_id: str, step: str) -> None:
    """Let the gated step `step` of the `steps` task (`params["gate"]`) finish, in every worker running it."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "insert into worker_effects (queue, task_id, step, event, pid) values (%s, %s, %s, 'open', 0)",
            (queue, str(task_id), step),
        )


async def is_completed(absurd: AsyncAbsurd, task_id: str) -> bool:
    """Whether the task has completed."""
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state == "completed"
