"""The claim is kept alive while a long step runs, and a cancelled task aborts its in-flight step."""

from __future__ import annotations

from pathlib import Path

import pytest
from absurd_sdk import AsyncAbsurd

from tests.helpers.polling import wait_terminal, wait_until
from tests.helpers.processes import Workers, state_lines
from tests.system.test_crash import start_worker

pytestmark = pytest.mark.crash


async def test_long_model_call_with_short_lease_is_sent_once(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    spawned = await absurd_client.spawn("crashy", {}, queue=absurd_queue)
    env = {"FIRST_MODEL_DELAY": "8"}
    first = start_worker(workers, absurd_dsn, absurd_queue, tmp_path, claim_timeout=3, env=env)
    await wait_until(lambda: state_lines(tmp_path, "model-started"), 60)
    second = start_worker(workers, absurd_dsn, absurd_queue, tmp_path, claim_timeout=3, env=env)  # polls all along
    try:
        snapshot = await wait_terminal(absurd_client, str(spawned["task_id"]), timeout=60)
    finally:
        (tmp_path / "stop").touch()
        first.wait(timeout=10)
        second.wait(timeout=10)
    assert snapshot.state == "completed", snapshot.failure
    assert state_lines(tmp_path, "model-started") == ["0"]  # the 8 s call outlived two claim timeouts, yet ran once
    assert state_lines(tmp_path, "model") == ["0", "1", "2"]
    assert sorted(state_lines(tmp_path, "charge")) == ["1", "2", "3"]


async def test_cancel_aborts_the_in_flight_call_within_a_heartbeat(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    spawned = await absurd_client.spawn("crashy", {}, queue=absurd_queue)
    worker = start_worker(workers, absurd_dsn, absurd_queue, tmp_path, claim_timeout=3, env={"FIRST_MODEL_DELAY": "60"})
    try:
        await wait_until(lambda: state_lines(tmp_path, "model-started"), 60)
        await absurd_client.cancel_task(str(spawned["task_id"]))
        await wait_until(
            lambda: state_lines(tmp_path, "model-aborted"), 15, message="the in-flight model call was not aborted"
        )
        snapshot = await wait_terminal(absurd_client, str(spawned["task_id"]), timeout=10)
    finally:
        (tmp_path / "stop").touch()
        worker.wait(timeout=10)
    assert snapshot.state == "cancelled"
    assert state_lines(tmp_path, "model") == []  # the call never completed
