"""Real worker processes SIGKILLed on each side of a `durable_transaction()` commit: each refund row exists once.

The worker (`tests/helpers/apps/txn_worker.py`) refunds three orders in parallel tool calls, each inserting one row in
a `durable_transaction()` block. It kills itself at a commit hook (fault injection, not timing): just before a
tool step's rows and checkpoint commit, or just after. A fresh worker replaces each dead one and resumes the task
once the dead one's claim (2 s) has expired. Rows are counted in Postgres; executions in a file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd

from tests.helpers.paths import ROOT
from tests.helpers.transactions import refunds_table

pytestmark = pytest.mark.crash


@pytest.fixture
async def table(absurd_dsn: str) -> AsyncIterator[str]:
    async for name in refunds_table(absurd_dsn, f"refunds_{uuid.uuid4().hex[:10]}"):
        yield name


def start_worker(dsn: str, queue: str, table: str, state: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.helpers.apps.txn_worker", dsn, queue, table, str(state), "2"]
    return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ))


async def run_with_replacements(absurd: AsyncAbsurd, dsn: str, queue: str, table: str, state: Path) -> list[int]:
    """Run the task to its end, replacing every worker that dies; return the exit codes of the dead ones."""
    spawned = await absurd.spawn("refunds", {}, queue=queue)
    codes: list[int] = []
    worker = start_worker(dsn, queue, table, state)
    deadline = time.monotonic() + 90
    try:
        while True:
            snapshot = await absurd.fetch_task_result(spawned["task_id"])
            if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
                assert snapshot.state == "completed", snapshot.failure
                return codes
            assert time.monotonic() < deadline, "the task did not finish"
            if worker.poll() is not None:
                codes.append(worker.returncode)
                worker = start_worker(dsn, queue, table, state)
            await asyncio.sleep(0.1)
    finally:
        (state / "stop").touch()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when a worker hangs
            worker.kill()


async def rows_by_order(dsn: str, table: str) -> Counter[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(f'select order_id from "{table}"')  # type: ignore[arg-type]
        return Counter(row[0] for row in await cursor.fetchall())


@pytest.mark.parametrize(
    ("faults", "killed", "executions"),
    [
        pytest.param(["kill-before-b"], 1, {"b": 2}, id="killed-just-before-the-commit"),
        pytest.param(["kill-after-b"], 1, {"b": 1}, id="killed-just-after-the-commit"),
        pytest.param(["fail-c", "kill-before-a"], 1, {"a": 2}, id="failing-sibling-then-killed-before-a-commit"),
        pytest.param(["kill-before-a", "kill-after-a"], 2, {"a": 2}, id="killed-before-then-after-the-same-commit"),
    ],
)
async def test_each_refund_row_is_written_exactly_once(
    absurd_client: AsyncAbsurd,
    absurd_dsn: str,
    absurd_queue: str,
    table: str,
    tmp_path: Path,
    faults: list[str],
    killed: int,
    executions: dict[str, int],
) -> None:
    """`executions`: how often the tools whose count is decided by the faults ran, in all workers.

    A sibling's count is not: a sibling still in flight when its worker is killed runs again (under load even one
    started before the killed step), and its row is still written once.
    """
    for fault in faults:
        (tmp_path / fault).touch()
    codes = await run_with_replacements(absurd_client, absurd_dsn, absurd_queue, table, tmp_path)
    assert codes == [-9] * killed
    assert await rows_by_order(absurd_dsn, table) == Counter({"a": 1, "b": 1, "c": 1})
    # The killed step's tool ran again only when its commit was lost; siblings in flight at a kill may run again.
    ran = Counter((tmp_path / "executions").read_text().split())
    assert {order: ran[order] for order in executions} == executions
