"""What the crash test apps share: durable records of what ran, dying on cue, working until told to stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from absurd_sdk import AsyncAbsurd


def append(path: Path, line: str) -> None:
    """Append `line` to `path` and fsync it, so the record survives a SIGKILL right after."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    """The lines `append` wrote to `path` (none before the first)."""
    return path.read_text().splitlines() if path.exists() else []


def die_if_armed(trigger: Path) -> None:
    """SIGKILL this process (the way an OOM kill ends it) if `trigger` exists; the trigger fires once."""
    if trigger.exists():
        trigger.unlink()
        os.kill(os.getpid(), signal.SIGKILL)


async def work_until_stopped(absurd: AsyncAbsurd, state: Path, name: str, *, claim_timeout: int) -> None:
    """Run the queue's tasks batch after batch until `<state>/stop` exists, then close the client."""
    try:
        while not (state / "stop").exists():
            await absurd.work_batch(worker_id=f"{name}-{os.getpid()}", claim_timeout=claim_timeout)
            await asyncio.sleep(0.05)
    finally:
        await absurd.close()
