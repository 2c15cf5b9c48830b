"""Real worker processes are SIGKILLed mid-answer; readers in other processes see an exact, resumable log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.events import StepInterruptedEvent
from tests.helpers.events import answer_words, collect, shown_text
from tests.helpers.polling import wait_until
from tests.helpers.processes import Process, Workers

pytestmark = pytest.mark.crash

WORDS = 40


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_sigkill_mid_answer_leaves_marked_partial_events_and_the_complete_answer(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    (tmp_path / "kill-at-15").touch()
    spawned = await absurd_client.spawn("answer", {"prompt": "hi"}, queue=absurd_queue)
    task_id = str(spawned["task_id"])
    outputs = [tmp_path / "reader-0.jsonl", tmp_path / "reader-3.jsonl"]
    readers = [
        workers.app("events_reader", absurd_dsn, absurd_queue, task_id, str(outputs[0]), "0"),
        workers.app("events_reader", absurd_dsn, absurd_queue, task_id, str(outputs[1]), "3"),
    ]
    worker = workers.app("events_worker", absurd_dsn, absurd_queue, str(tmp_path), "2")
    replacement: Process | None = None
    try:
        await wait_until(lambda: worker.poll() is not None, 60)
        assert worker.returncode == -9
        replacement = workers.app("events_worker", absurd_dsn, absurd_queue, str(tmp_path), "2")
        for reader in readers:
            await wait_until(lambda reader=reader: reader.poll() is not None, 60)
            assert reader.returncode == 0
    finally:
        (tmp_path / "stop").touch()
        for process in [worker, replacement, *readers]:
            if process is not None and process.poll() is None:
                process.wait(timeout=20)

    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "completed"
    full = await collect(absurd_client, task_id)
    assert [e.seq for e in full] == list(range(1, len(full) + 1))

    # Exactly once for committed steps: the tool ran once and its events are in the log once.
    assert (tmp_path / "tool").read_text().split() == ["x"]
    assert [e.kind for e in full].count("function_tool_call") == 1
    assert [e.kind for e in full].count("function_tool_result") == 1

    # The interrupted model step: its partial events, then the marker, then the next attempt's events.
    markers = [i for i, e in enumerate(full) if isinstance(e.event, StepInterruptedEvent)]
    assert len(markers) == 1
    marker = full[markers[0]].event
    assert isinstance(marker, StepInterruptedEvent)
    assert marker.attempt == 1
    partial = [e for e in full[: markers[0]] if e.step == marker.step]
    assert [e.kind for e in partial].count("part_delta") >= 14
    assert full[markers[0] + 1].kind == "run_started" and full[markers[0] + 1].attempt == 2
    assert all(e.attempt == 2 for e in full[markers[0] + 1 :])
    assert shown_text(full) == "".join(answer_words(WORDS))
    assert full[-1].kind == "run_finished"

    # Readers in other processes got exactly the log after their offset, live through the crash.
    assert [line["seq"] for line in read_lines(outputs[0])] == [e.seq for e in full]
    assert [line["seq"] for line in read_lines(outputs[1])] == [e.seq for e in full[3:]]

    # Any offset yields exactly the events after it.
    for after in range(len(full) + 1):
        assert await collect(absurd_client, task_id, after=after) == full[after:]
