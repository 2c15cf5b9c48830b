"""`absurdctl emit-event` (another process, another language's client) resumes a run waiting for approval."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from absurd_sdk import AsyncAbsurd

from tests.unit.engine.test_external_events import PLAIN_PAYLOAD, check_a_plain_payload_resumes_the_run


async def test_a_plain_json_payload_from_absurdctl_resumes_the_run(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    absurdctl = Path(sys.executable).with_name("absurdctl")

    async def send(token: str) -> None:
        command = [str(absurdctl), "emit-event", token, "-d", absurd_dsn, "-q", absurd_queue]
        completed = await asyncio.to_thread(
            subprocess.run,
            [*command, "--payload", json.dumps(PLAIN_PAYLOAD)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr

    await check_a_plain_payload_resumes_the_run(absurd_client, send)
