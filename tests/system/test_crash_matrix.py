"""The crash matrix: one durable agent run SIGKILLed at every step boundary, before and after each checkpoint commits.

The run (see `tests/helpers/apps/matrix_worker.py`) has three model calls, three parallel side-effect tool calls, and an MCP
call (in-process FastMCP server) in parallel with another side-effect tool, plus the steps Pydantic AI adds
(start time, MCP tool listings): well over eight checkpoints. A reference task runs uninterrupted; then, for
every checkpoint it wrote (by name: parallel calls commit in no fixed order), one task is killed just before
that checkpoint commits (its body has run: the worst moment) and one just after. A fork server replaces every killed worker at once; short leases (2 s) let
another worker reclaim the task.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, TaskResultSnapshot

from tests.helpers.apps._common import read_lines
from tests.helpers.apps.matrix_worker import effect_of
from tests.helpers.polling import TERMINAL, wait_until
from tests.helpers.processes import Workers

pytestmark = pytest.mark.crash

CLAIM_TIMEOUT = 2
WORKERS = 3


async def wait_all(absurd: AsyncAbsurd, task_ids: list[str], timeout: float) -> dict[str, TaskResultSnapshot]:
    done: dict[str, TaskResultSnapshot] = {}

    async def all_done() -> bool:
        for task_id in task_ids:
            if task_id not in done:
                snapshot = await absurd.fetch_task_result(task_id)
                if snapshot is not None and snapshot.state in TERMINAL:
                    done[task_id] = snapshot
        return len(done) == len(task_ids)

    await wait_until(
        all_done,
        timeout,
        interval=0.1,
        message=lambda: f"{len(task_ids) - len(done)} tasks did not finish in {timeout} s",
    )
    return done


@pytest.fixture
def fork_server(absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers) -> Iterator[Path]:
    state = tmp_path / "matrix"
    state.mkdir()
    (state / "queue").write_text(absurd_queue)
    args = ["matrix", absurd_dsn, absurd_queue, str(state), str(WORKERS), str(CLAIM_TIMEOUT)]
    server = workers.app("matrix_worker", *args)
    try:
        yield state
    finally:
        (state / "stop").touch()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when a worker hangs
            server.close()
    assert "Traceback" not in server.output()


async def spawn(absurd: AsyncAbsurd, state: Path, label: str, when: str, at: str) -> str:
    (state / label).mkdir()
    params = {"label": label, "when": when, "at": at}
    spawned = await absurd.spawn("matrix", params, max_attempts=5, queue=(state / "queue").read_text())
    return str(spawned["task_id"])


async def test_sigkill_at_every_step_boundary_resumes_to_the_same_output(
    absurd_client: AsyncAbsurd, fork_server: Path
) -> None:
    state = fork_server
    reference_id = await spawn(absurd_client, state, "reference", "never", "")
    reference = (await wait_all(absurd_client, [reference_id], timeout=60))[reference_id]
    assert reference.state == "completed", reference.failure
    assert isinstance(reference.result, dict)
    assert reference.result["output"] == "receipt-1 | receipt-2 | receipt-3 | sunny (c-mcp) | sent to ops"
    commits = read_lines(state / "reference" / "commits")
    assert len(commits) == len(set(commits)) >= 8, commits
    effects = Counter(read_lines(state / "reference" / "effects"))
    assert effects == Counter(
        ["model@0", "model@1", "model@2", "tool@p1", "tool@p2", "tool@p3", "tool@c-mcp", "tool@c-send"]
    )
    assert all(count == 1 for count in effects.values())
    # Every side effect belongs to exactly one checkpoint.
    assert sorted(e for c in commits if (e := effect_of(c))) == sorted(effects)

    cases = {
        await spawn(absurd_client, state, f"{when}-{k}", when, name): (when, k)
        for k, name in enumerate(commits, start=1)
        for when in ("before", "after")
    }
    results = await wait_all(absurd_client, list(cases), timeout=120)

    failures: list[str] = []
    for task_id, (when, k) in cases.items():
        folder = state / f"{when}-{k}"
        snapshot = results[task_id]
        try:
            assert snapshot.state == "completed", snapshot.failure
            assert snapshot.result == reference.result
            # The worker died where it was told to: at the k-th checkpoint of the uninterrupted run.
            assert read_lines(folder / "killed") == [f"{when} {commits[k - 1]}"]
            # Every checkpoint committed exactly once: a committed step never ran again.
            assert sorted(read_lines(folder / "commits")) == sorted(commits)
            # Side effects and model calls: once each, except the steps in flight at the kill (their body had
            # run, their checkpoint had not committed: with parallel tools, possibly more than one), which ran
            # exactly once more. The killed step itself is one of them when killed before its commit.
            extra = Counter(read_lines(folder / "effects"))
            extra.subtract(effects)
            in_flight = Counter(read_lines(folder / "in_flight"))
            if when == "before" and (own := effect_of(commits[k - 1])):
                assert in_flight[own] == 1, dict(in_flight)
            assert +extra == in_flight, (dict(extra), dict(in_flight))
            assert -extra == Counter(), dict(extra)
        except AssertionError as error:
            failures.append(f"{when} commit #{k} ({commits[k - 1]}): {error}")
    assert not failures, "\n".join(failures)
    exits = read_lines(state / "exits")
    assert exits == ["-9"] * len(cases), exits
    summary: dict[str, Any] = {"checkpoints": len(commits), "kills": len(exits)}
    print(summary)
