"""`examples/web_app.py` end to end over HTTP: spawn, stream, reconnect with Last-Event-ID, approve, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.helpers.polling import wait_until_sync
from tests.helpers.web_app import EXAMPLE, Message, free_port, parse, shown_text, web_app

pytestmark = [pytest.mark.crash, pytest.mark.slow]

sys.path.insert(0, str(EXAMPLE.parent))
from web_app import answer_text  # noqa: E402


def test_the_web_app_example_runs(absurd_dsn: str) -> None:
    env = {
        **os.environ,
        "ABSURD_DATABASE_URL": absurd_dsn,
        "WEB_APP_QUEUE": f"web_{uuid.uuid4().hex[:8]}",
        "PORT": str(free_port()),
        "WEB_APP_WORD_DELAY": "0",
    }
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--check"], env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("(40 words)") == 2
    assert "waiting for approval; approving" in result.stdout


async def read_until(
    client: httpx.AsyncClient, task_id: str, stop: str | int | None, *, last_event_id: str | None = None
) -> list[Message]:
    """Read the task's SSE stream until `stop` (a chunk type or status kind; an int: that many text deltas)."""
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    buffer = ""
    out: list[Message] = []
    deltas = 0
    async with client.stream("GET", f"/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for text in response.aiter_text():
            buffer += text
            while "\n\n" in buffer:
                raw, buffer = buffer.split("\n\n", 1)
                message = next(parse(raw + "\n\n"))
                out.append(message)
                chunk = message.data or {}
                deltas += chunk.get("type") == "text-delta"
                kind = chunk.get("data", {}).get("event_kind") if chunk.get("type") == "data-absurd-status" else None
                if isinstance(stop, int) and deltas >= stop and message.id is not None:
                    return out
                if stop is not None and (chunk.get("type") == stop or kind == stop):
                    return out
    return out


async def test_stream_reconnect_kill_and_approve_over_http(absurd_dsn: str, tmp_path: Path) -> None:
    async with (
        web_app(absurd_dsn, f"web_{uuid.uuid4().hex[:8]}", tmp_path) as app,
        httpx.AsyncClient(base_url=app.base, timeout=60) as client,
    ):
        app.hold_file.touch()  # the answer parks after 10 words until the file is removed
        spawned = (await client.post("/chat", json={"message": "Where is my order A-1?"})).json()
        task_id = spawned["task_id"]

        # First connection: the tool call and the first words arrive live; then the connection drops.
        first = await read_until(client, task_id, 8)
        assert all(m.id is not None and m.data is not None for m in first)  # each event has its id and data
        assert any((m.data or {}).get("type") == "tool-input-available" for m in first)
        last_id = first[-1].id
        assert last_id is not None

        # The worker dies mid-answer; another one takes over.
        app.kill_worker()
        app.hold_file.unlink()
        app.start_worker()

        # The browser reconnects with Last-Event-ID and gets exactly the rest.
        cut = "".join(m.raw for m in first)
        rest = await read_until(client, task_id, None, last_event_id=last_id)
        full = await read_until(client, task_id, None)
        assert cut + "".join(m.raw for m in rest) == "".join(m.raw for m in full)
        kinds = [m.data["data"]["event_kind"] for m in full if m.data and m.data["type"] == "data-absurd-status"]
        # A dead worker's run is handed back (same attempt: `resumed`) or fails by lease expiry (a new attempt).
        assert kinds in (
            ["run_started", "resumed", "step_interrupted", "run_finished"],
            ["run_started", "step_interrupted", "run_started", "run_finished"],
        )
        assert shown_text(full).strip() == answer_text()
        done = await client.get(f"/tasks/{task_id}/events", headers={"last-event-id": str(full[-1].id)})
        assert (await client.get(f"/tasks/{task_id}")).json() == {"state": "completed", "failure": None}
        assert (await client.get("/tasks/not-a-task")).status_code == 404
        assert done.status_code == 204

        # A refund waits for approval; the approval resumes the same run, in the same conversation.
        spawned = (
            await client.post(
                "/chat",
                json={"message": "Please refund order A-1.", "conversation_id": spawned["conversation_id"]},
            )
        ).json()
        waiting = await read_until(client, spawned["task_id"], "waiting_for_input")
        status = next(
            m.data["data"]
            for m in waiting
            if m.data and m.data["type"] == "data-absurd-status" and m.data["data"]["event_kind"] == "waiting_for_input"
        )
        assert status["request"]["requests"]["approvals"][0]["tool_name"] == "refund"
        answer = await client.post(f"/inbox/{quote(status['token'], safe='')}", json={"approve": True})
        assert answer.json() == {"ok": True}
        again = await client.post(f"/inbox/{quote(status['token'], safe='')}", json={"approve": True})
        assert again.status_code == 409
        rest = await read_until(client, spawned["task_id"], None, last_event_id=waiting[-1].id)
        assert any((m.data or {}).get("type") == "tool-output-available" for m in rest)
        assert shown_text(rest).strip() == answer_text()


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_sigterm_stops_the_server_and_the_worker_too(absurd_dsn: str) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": absurd_dsn, "WEB_APP_QUEUE": f"web_{uuid.uuid4().hex[:8]}"}
    env["PORT"] = str(free_port())
    example = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stdout=subprocess.DEVNULL)
    children: list[int] = []
    try:

        def started() -> bool:
            assert example.poll() is None, "the example exited"
            children[:] = child_pids(example.pid)
            return len(children) >= 2 and up(f"http://127.0.0.1:{env['PORT']}")

        wait_until_sync(started, 120, interval=0.1, message="the example did not start")
        example.send_signal(signal.SIGTERM)
        example.wait(timeout=60)
        wait_until_sync(
            lambda: not any(alive(child) for child in children), 60, interval=0.1, message=f"still running: {children}"
        )
    finally:
        for child in children:
            if alive(child):
                os.kill(child, signal.SIGKILL)
        if example.poll() is None:
            example.kill()
            example.wait()


def up(base: str) -> bool:
    try:
        return httpx.get(base, timeout=5).status_code == 200
    except httpx.TransportError:
        return False
