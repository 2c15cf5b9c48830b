"""`examples/web_app.html` in a real browser: headless Chromium driven over the DevTools protocol.

Skipped only where no Chromium is installed, and never under `CI=true` (CI installs Debian's `chromium`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.polling import wait_until
from tests.helpers.web_app import EXAMPLE, free_port, web_app

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
        try:
            return await wait_until(lambda: self.js(expression), timeout)
        except AssertionError:
            page = await self.js("document.body.innerText")
            raise AssertionError(f"not true within {timeout}s: {expression}; page: {page}") from None


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
        async with httpx.AsyncClient() as client:

            async def page_target() -> dict[str, Any] | None:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    targets = (await client.get(f"http://127.0.0.1:{port}/json")).json()
                    return next((t for t in targets if t.get("type") == "page"), None)
                return None

            target = await wait_until(page_target, 60, interval=0.1, message="Chromium did not open its DevTools port")
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
LAST_TOOL = "[...document.querySelectorAll('.tool')].at(-1)"
SENDING = "document.getElementById('send').disabled"
# The last turn's answer (it follows the last message sent) is complete.
ANSWERED = (
    f"!!{LAST_ANSWER} && {LAST_ANSWER}.dataset.done === 'completed' && !!([...document.querySelectorAll('.user')]"
    f".at(-1).compareDocumentPosition({LAST_ANSWER}) & Node.DOCUMENT_POSITION_FOLLOWING)"
)
# The answer bubble comes after the tool calls that preceded it, and none is empty.
ANSWER_AFTER_TOOLS = (
    f"!!({LAST_ANSWER}.compareDocumentPosition({LAST_TOOL}) & Node.DOCUMENT_POSITION_PRECEDING)"
    " && [...document.querySelectorAll('.assistant')].every((a) => a.textContent)"
)


async def test_the_page_streams_approves_and_survives_a_killed_worker(absurd_dsn: str, tmp_path: Path) -> None:
    async with web_app(absurd_dsn, f"web_{uuid.uuid4().hex[:8]}", tmp_path) as app, browser(app.base, tmp_path) as page:
        # The streamed answer appears, and the tool call is shown while it happens.
        app.hold_file.touch()
        await send(page, "Where is my order A-1?")
        await page.wait_for(f"{LAST_ANSWER} && {LAST_ANSWER}.textContent.split(' ').length >= 8")
        assert "lookup_order" in await page.js("document.body.innerText")
        assert await page.js(f"{LAST_ANSWER}.dataset.done") is None  # still streaming
        assert await page.js(SENDING)  # one turn at a time: Send waits for this one
        assert await page.js(ANSWER_AFTER_TOOLS)

        # SIGKILL the worker mid-answer; a new one finishes the run; the page shows the complete answer.
        app.kill_worker()
        app.hold_file.unlink()
        app.start_worker()
        await page.wait_for(ANSWERED)
        assert (await page.js(f"{LAST_ANSWER}.textContent")).strip() == answer_text()
        await page.wait_for(f"!{SENDING}")

        # A refund waits: the Approve button appears, and clicking it resumes the run.
        answers = await page.js("document.querySelectorAll('.assistant').length")
        await send(page, "Please refund order A-1.")
        await page.wait_for("!document.getElementById('approval').hidden")
        assert "refund" in await page.js("document.getElementById('approval-text').textContent")
        # No empty answer bubble while the run waits; the refund call is the last thing shown.
        assert await page.js("document.querySelectorAll('.assistant').length") == answers
        assert "refund" in await page.js("document.getElementById('log').lastElementChild.textContent")
        assert await page.js(SENDING)
        await page.js("document.getElementById('approve').click()")
        await page.wait_for(ANSWERED)
        assert (await page.js(f"{LAST_ANSWER}.textContent")).strip() == answer_text()
        assert "refunded 25 EUR" in await page.js(f"{LAST_TOOL}.textContent")
        assert await page.js(ANSWER_AFTER_TOOLS)
        await page.wait_for(f"!{SENDING}")


# Model and tool text that would run script if it were put into the page as HTML, with control characters.
HOSTILE = '<script>window.pwned = "script"</script><img src=x onerror="window.pwned = \'img\'">\x1b[2J\u202e'


async def test_the_page_shows_hostile_text_literally_and_a_conflict_as_such(absurd_dsn: str, tmp_path: Path) -> None:
    async with web_app(absurd_dsn, f"web_{uuid.uuid4().hex[:8]}", tmp_path) as app, browser(app.base, tmp_path) as page:
        # A message the server refuses is said so, and Send works again.
        await send(page, "   ")
        await page.wait_for("document.getElementById('log').lastElementChild.textContent.includes('message is empty')")
        await page.wait_for(f"!{SENDING}")

        await send(page, f"Where is my order {HOSTILE}?")
        await page.wait_for(ANSWERED)
        shown = await page.js("document.getElementById('log').textContent")
        assert await page.js("window.pwned") is None
        assert await page.js("document.querySelectorAll('#log script, #log img').length") == 0
        literal = '<script>window.pwned = "script"</script><img src=x onerror="window.pwned = \'img\'">\\x1b[2J\\u202e'
        assert (await page.js(f"{LAST_ANSWER}.textContent")) == f"I found no order {literal}."
        assert "\x1b" not in shown and "\u202e" not in shown and "<script>window.pwned" in shown
        assert "not found" in await page.js(f"{LAST_TOOL}.textContent")
        await page.wait_for(f"!{SENDING}")

        # A refund waits for approval; meanwhile another turn of the same conversation completes.
        await send(page, "Please refund order A-1.")
        await page.wait_for("!document.getElementById('approval').hidden")
        conversation_id = await page.js("conversationId")
        async with httpx.AsyncClient(base_url=app.base, timeout=60) as client:
            other = await client.post(
                "/chat", json={"message": "Where is my order A-1?", "conversation_id": conversation_id}
            )
            task_id = other.json()["task_id"]

            async def completed() -> bool:
                return (await client.get(f"/tasks/{task_id}")).json()["state"] == "completed"

            await wait_until(completed, 60, message="the other turn did not complete")
        # The approved turn cannot save the conversation: the page says so, and Send works again.
        await page.js("document.getElementById('approve').click()")
        await page.wait_for("document.getElementById('state').textContent.startsWith('conversation conflict')")
        assert "conversation conflict" in await page.js("[...document.querySelectorAll('.error')].at(-1).textContent")
        await page.wait_for(f"!{SENDING}")
