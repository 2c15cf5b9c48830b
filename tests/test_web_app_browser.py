"""`examples/web_app.html` in a real browser: headless Chromium driven over the DevTools protocol.

Skipped only where no Chromium is installed, and never under `CI=true` (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .web_app_support import EXAMPLE, free_port, web_app

pytestmark = [pytest.mark.crash, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if CHROMIUM is None and os.environ.get("CI") != "true":
    pytest.skip("no Chromium installed (apt-get install chromium)", allow_module_level=True)

sys.path.insert(0, str(EXAMPLE.parent))
from web_app import answer_text  # noqa: E402


class Page:
    """One browser tab over the Chrome DevTools protocol: evaluate JavaScript, wait for conditions."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"not true within {timeout}s: {expression}; page: {await self.js('document.body.innerText')}"
        )


@contextlib.asynccontextmanager
async def browser(url: str, tmp_path: Path) -> AsyncIterator[Page]:
    import websockets

    assert CHROMIUM is not None, "CI=true needs Chromium: apt-get install chromium"
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting the browser once
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        target: dict[str, Any] | None = None
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while target is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    targets = (await client.get(f"http://127.0.0.1:{port}/json")).json()
                    target = next((t for t in targets if t.get("type") == "page"), None)
                if target is None:
                    await asyncio.sleep(0.1)
        assert target is not None, "Chromium did not open its DevTools port"
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as socket:
            page = Page(socket)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=url)
            await page.wait_for("document.readyState === 'complete' && !!document.getElementById('chat')")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when Chromium hangs
            process.kill()


async def send(page: Page, message: str) -> None:
    await page.js(f"document.getElementById('message').value = {json.dumps(message)}")
    await page.js("document.getElementById('send').click()")


LAST_ANSWER = "[...document.querySelectorAll('.assistant')].at(-1)"


async def test_the_page_streams_approves_and_survives_a_killed_worker(absurd_dsn: str, tmp_path: Path) -> None:
    async with web_app(absurd_dsn, f"web_{uuid.uuid4().hex[:8]}", tmp_path) as app, browser(app.base, tmp_path) as page:
        # The streamed answer appears, and the tool call is shown while it happens.
        app.hold_file.touch()
        await send(page, "Where is my order A-1?")
        await page.wait_for(f"{LAST_ANSWER} && {LAST_ANSWER}.textContent.split(' ').length >= 8")
        assert "lookup_order" in await page.js("document.body.innerText")
        assert await page.js(f"{LAST_ANSWER}.dataset.done") is None  # still streaming

        # SIGKILL the worker mid-answer; a new one finishes the run; the page shows the complete answer.
        app.kill_worker()
        app.hold_file.unlink()
        app.start_worker()
        await page.wait_for(f"{LAST_ANSWER}.dataset.done === 'completed'")
        assert (await page.js(f"{LAST_ANSWER}.textContent")).strip() == answer_text()

        # A refund waits: the Approve button appears, and clicking it resumes the run.
        await send(page, "Please refund order A-1.")
        await page.wait_for("!document.getElementById('approval').hidden")
        assert "refund" in await page.js("document.getElementById('approval-text').textContent")
        await page.js("document.getElementById('approve').click()")
        await page.wait_for(f"{LAST_ANSWER}.dataset.done === 'completed'")
        assert (await page.js(f"{LAST_ANSWER}.textContent")).strip() == answer_text()
        assert "refunded 25 EUR" in await page.js("document.body.innerText")
