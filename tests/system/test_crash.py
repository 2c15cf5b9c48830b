"""Real worker processes are SIGKILLed at chosen points; a second worker resumes the task from Postgres."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, TaskResultSnapshot

from tests.helpers.polling import TERMINAL, wait_until
from tests.helpers.processes import Process, Workers, state_lines

pytestmark = pytest.mark.crash


def start_worker(
    workers: Workers, dsn: str, queue: str, state: Path, *, claim_timeout: int = 2, env: dict[str, str] | None = None
) -> Process:
    """A `crash_worker` process: it dies (SIGKILL) at the points `state/kill-*` name, and stops on `state/stop`."""
    return workers.app("crash_worker", dsn, queue, str(state), str(claim_timeout), env=env)


async def run_scenario(
    workers: Workers, absurd: AsyncAbsurd, dsn: str, queue: str, state: Path, kill_points: list[str]
) -> tuple[TaskResultSnapshot, list[int]]:
    for point in kill_points:
        (state / f"kill-{point}").touch()
    spawned = await absurd.spawn("crashy", {}, queue=queue)
    exit_codes: list[int] = []
    worker = start_worker(workers, dsn, queue, state)
    try:
        # Each killed worker is replaced by a fresh one, as an orchestrator would.
        async def finished() -> TaskResultSnapshot | None:
            nonlocal worker
            snapshot = await absurd.fetch_task_result(spawned["task_id"])
            if snapshot is not None and snapshot.state in TERMINAL:
                return snapshot
            if worker.poll() is not None:
                exit_codes.append(worker.returncode)
                worker = start_worker(workers, dsn, queue, state)
            return None

        snapshot = await wait_until(finished, 60, interval=0.1)
    finally:
        (state / "stop").touch()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when a worker hangs
            worker.kill()
    return snapshot, exit_codes


_reference: dict[str, Any] = {}


async def uninterrupted_result(
    workers: Workers, absurd: AsyncAbsurd, dsn: str, queue: str, tmp_path: Path
) -> dict[str, Any]:
    """The result of a run no worker died in: the same for every test, so the first test that needs it runs it."""
    if not _reference:
        state = tmp_path / "uninterrupted"
        state.mkdir()
        uninterrupted, codes = await run_scenario(workers, absurd, dsn, queue, state, [])
        assert codes == []
        assert uninterrupted.state == "completed" and uninterrupted.result is not None, uninterrupted.failure
        _reference.update(uninterrupted.result)  # type: ignore[arg-type]
    return _reference


@pytest.mark.parametrize(
    "kill_points",
    [
        pytest.param(["tool-2"], id="inside-a-tool"),
        pytest.param(["after-tool-3"], id="after-a-side-effect-before-its-checkpoint"),
        pytest.param(["model-1"], id="inside-a-model-call"),
        pytest.param(["between-runs"], id="between-two-agent-runs"),
        pytest.param(["tool-1", "tool-3", "model-1"], id="several-crashes-during-parallel-calls"),
    ],
)
async def test_sigkilled_worker_is_resumed_by_another(
    absurd_client: AsyncAbsurd,
    absurd_dsn: str,
    absurd_queue: str,
    tmp_path: Path,
    workers: Workers,
    kill_points: list[str],
) -> None:
    reference_result = await uninterrupted_result(workers, absurd_client, absurd_dsn, absurd_queue, tmp_path)
    crashed_state = tmp_path / "crashed"
    crashed_state.mkdir()
    resumed, codes = await run_scenario(workers, absurd_client, absurd_dsn, absurd_queue, crashed_state, kill_points)
    assert codes == [-9] * len(kill_points)

    assert resumed.state == "completed", resumed.failure
    assert resumed.result is not None
    result: dict[str, Any] = dict(resumed.result)  # type: ignore[arg-type]
    assert result["output"] == reference_result["output"] == "charged ['receipt-1', 'receipt-2', 'receipt-3']"
    assert result["second"] == reference_result["second"]
    assert result["usage"] == reference_result["usage"]
    # Each charge committed once; only a charge killed after its side effect but before its checkpoint
    # (the one in-flight step) may run twice.
    charges = state_lines(crashed_state, "charge")
    doubled = {p.removeprefix("after-tool-") for p in kill_points if p.startswith("after-tool-")}
    for amount in ("1", "2", "3"):
        assert charges.count(amount) == (2 if amount in doubled else 1), charges
    # Each completed model step was sent once: three requests in all (two in the first run, one in the second),
    # plus the one killed mid-call, which never returned.
    models = state_lines(crashed_state, "model")
    assert len(models) == 3, models
