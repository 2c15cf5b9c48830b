"""What `pydantic-ai-absurd verify` prints for a divergence: where the user's code is, and what differs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pydantic_ai_absurd.testing import run_queued
from tests.helpers.apps.verify_app import build_app
from tests.helpers.paths import ROOT

CONSOLE_SCRIPT = Path(sys.executable).parent / "pydantic-ai-absurd"


def _record(dsn: str, queue: str) -> str:
    async def go() -> str:
        app = build_app(dsn, queue)
        spawned = await app.absurd.spawn("bill", {"prompt": "bill it"})
        await run_queued(app.absurd)
        await app.absurd.close()
        return str(spawned["task_id"])

    return asyncio.run(go())


def _verify(dsn: str, queue: str, variant: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTEST_VERSION", "CI"}}
    # As a user at a terminal would see it: the banner is shown to a coding agent's pipe too.
    env.update(VERIFY_DSN=dsn, VERIFY_QUEUE=queue, VERIFY_VARIANT=variant, CLAUDECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    command = [str(CONSOLE_SCRIPT), "verify", "tests.helpers.apps.verify_cli_app:absurd", "--queue", queue]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_divergence_names_the_handler_and_shows_the_diff(absurd_dsn: str, absurd_queue: str) -> None:
    task_id = _record(absurd_dsn, absurd_queue)
    result = _verify(absurd_dsn, absurd_queue, "new_instructions")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"DIVERGED {task_id} bill: step 'billing__model.request' (tests/helpers/apps/verify_app.py:" in out
    assert "pydantic-ai-absurd:" not in out.split("\n", 1)[0]  # not the CLI's entry script
    assert '-   "instructions": "Answer in English."' in out
    assert '+   "instructions": "Answer in French."' in out
    assert "--- recorded" in out and "+++ now" in out
    assert "logfire" not in (out + result.stderr).lower()
    assert "pydantic-ai v" not in result.stderr


def test_a_clean_verify_prints_no_banner(absurd_dsn: str, absurd_queue: str) -> None:
    _record(absurd_dsn, absurd_queue)
    result = _verify(absurd_dsn, absurd_queue, "same")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logfire" not in (result.stdout + result.stderr).lower()
