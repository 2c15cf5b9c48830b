"""Real worker processes die around the wait; the answer given in between is not lost and nothing runs twice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd import Inbox
from tests.helpers.polling import wait_until
from tests.helpers.processes import Workers, state_lines

pytestmark = pytest.mark.crash


async def test_workers_killed_after_asking_and_after_the_answer(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    (tmp_path / "kill-after-ask").touch()
    (tmp_path / "kill-tool").touch()
    inbox = Inbox(absurd_client)
    task_id = str((await absurd_client.spawn("ops", {}, queue=absurd_queue))["task_id"])
    started = [workers.app("inbox_worker", absurd_dsn, absurd_queue, str(tmp_path))]

    async def keep_one_alive() -> None:
        if started[-1].poll() is not None:
            started.append(workers.app("inbox_worker", absurd_dsn, absurd_queue, str(tmp_path)))

    async def waiting() -> list[object]:
        await keep_one_alive()
        return await inbox.pending(task_id=task_id)  # type: ignore[return-value]

    async def sleeping() -> bool:
        await keep_one_alive()
        return await _sleeping(absurd_client, task_id)

    async def finished() -> bool:
        await keep_one_alive()
        snapshot = await absurd_client.fetch_task_result(task_id)
        return snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}

    try:
        [request] = await wait_until(waiting, timeout=60)
        # The first worker died after recording the request, before its step committed: the retried step
        # found the row and did not notify again.
        assert started[0].wait(timeout=30) == -9
        await wait_until(sleeping, timeout=60)
        # No worker alive while the answer arrives: the answer waits in Postgres for the next one.
        started[-1].kill()
        assert started[-1].wait(timeout=30) == -9
        await inbox.approve(request.token, answered_by="ops-oncall")
        # The worker resuming the run dies as the approved call starts; the next one finishes the run.
        await wait_until(finished, timeout=60)
    finally:
        (tmp_path / "stop").touch()
        for worker in started:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when a worker hangs
                worker.kill()
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "completed", snapshot
    assert snapshot.result == "deleted /srv/old"
    assert not (tmp_path / "kill-after-ask").exists() and not (tmp_path / "kill-tool").exists()
    assert len([w for w in started if w.returncode == -9]) == 3
    assert state_lines(tmp_path, "deleted") == ["/srv/old"]
    assert state_lines(tmp_path, "model") == ["0", "1"]  # each model request sent once, across three workers
    assert state_lines(tmp_path, "notified") == [request.token]
    assert await inbox.pending(queue_name=absurd_queue) == []


async def _sleeping(absurd: AsyncAbsurd, task_id: str) -> bool:
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state == "sleeping"
