"""Runs `examples/web_app.py` as real processes (server, workers) and reads its SSE stream like a browser."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .paths import EXAMPLES, ROOT
from .polling import wait_until

EXAMPLE = EXAMPLES / "web_app.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WebApp:
    dsn: str
    queue: str
    hold_file: Path
    port: int = field(default_factory=free_port)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list[subprocess.Popen[bytes]])
    server: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ABSURD_DATABASE_URL": self.dsn,
            "WEB_APP_QUEUE": self.queue,
            "PORT": str(self.port),
            "WEB_APP_WORD_DELAY": "0.01",
            "WEB_APP_CLAIM_TIMEOUT": "2",
            "WEB_APP_HOLD_FILE": str(self.hold_file),
        }

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = subprocess.Popen([sys.executable, str(EXAMPLE), "--worker"], env=self.env(), cwd=ROOT)
        self.workers.append(worker)
        return worker

    def kill_worker(self) -> None:
        worker = self.workers[-1]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=20)

    async def start(self) -> None:
        self.server = subprocess.Popen(  # noqa: ASYNC220 - starting the server once
            [sys.executable, str(EXAMPLE), "--serve"], env=self.env(), cwd=ROOT
        )
        self.start_worker()
        async with httpx.AsyncClient(base_url=self.base) as client:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/")).status_code == 200
                return False

            await wait_until(up, 60, message="the web app did not start")

    def stop(self) -> None:
        for process in [*self.workers, self.server]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.server]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:  # pragma: no cover - only when a process hangs
                    process.kill()


@contextlib.asynccontextmanager
async def web_app(dsn: str, queue: str, tmp_path: Path) -> AsyncIterator[WebApp]:
    from pydantic_ai_absurd import setup

    await setup(dsn, queues=[queue])
    app = WebApp(dsn, queue, tmp_path / "hold")
    try:
        await app.start()
        yield app
    finally:
        app.stop()


@dataclass
class Message:
    """One SSE message: its `id` (when it sets one) and its JSON `data` chunk (when it has one)."""

    id: str | None
    data: dict[str, Any] | None
    raw: str


def parse(text: str) -> Iterator[Message]:
    for raw in text.split("\n\n"):
        if not raw:
            continue
        event_id: str | None = None
        data: dict[str, Any] | None = None
        for line in raw.split("\n"):
            if line.startswith("id: "):
                event_id = line.removeprefix("id: ")
            elif line.startswith("data: {"):
                data = json.loads(line.removeprefix("data: "))
        yield Message(event_id, data, raw + "\n\n")


def shown_text(messages: list[Message]) -> str:
    """What the page shows: text deltas, dropping the part a `step_interrupted` status says was lost."""
    text = ""
    part_start = 0
    for message in messages:
        chunk = message.data
        if chunk is None:
            continue
        if chunk["type"] == "text-start":
            part_start = len(text)
        elif chunk["type"] == "text-delta":
            text += chunk["delta"]
        elif chunk["type"] == "data-absurd-status" and chunk["data"]["event_kind"] == "step_interrupted":
            text = text[:part_start]
    return text
