"""`examples/chat.py` runs: three durable turns, the second one SIGKILLed and resumed by another worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import EXAMPLES

EXAMPLE = EXAMPLES / "chat.py"


@pytest.mark.crash
def test_chat_example_runs(absurd_dsn: str) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": absurd_dsn}
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert "SIGKILL in the middle of turn 2" in out
    assert "worker exited with -9" in out
    assert "order lookups: 1 " in out
    assert "user:      Thanks! What was my name again?" in out
    assert "assistant: Your name is Ada; this is message 3 of our chat." in out
    assert "8 messages, 3 user turns, each saved once" in out
