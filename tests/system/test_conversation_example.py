"""`examples/chat.py` runs: three durable turns, the second one SIGKILLed and resumed by another worker."""

from __future__ import annotations

import pytest

from tests.helpers.examples import run_example


@pytest.mark.crash
def test_chat_example_runs(absurd_dsn: str) -> None:
    out = run_example("chat", dsn=absurd_dsn, timeout=180).stdout
    assert "SIGKILL in the middle of turn 2" in out
    assert "worker exited with -9" in out
    assert "order lookups: 1 " in out
    assert "user:      Thanks! What was my name again?" in out
    assert "assistant: Your name is Ada; this is message 3 of our chat." in out
    assert "8 messages, 3 user turns, each saved once" in out
