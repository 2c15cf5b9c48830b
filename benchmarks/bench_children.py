"""Benchmarks of child tasks (`run_as_child`), offline, with scripted models, on one in-process worker.

Usage:
    python benchmarks/bench_children.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--quick] [--no-docs]

Creates a scratch database, measures, drops it, and writes the "Child tasks" section of docs/benchmarks.md
(between the `children-benchmark` markers).

Measured: a parent task whose tool fans out to K researcher agents, from spawn to the parent's completion,
on one worker with `concurrency=1` (the parent runs, suspends, the K children run one after the other, the
parent resumes) and with `concurrency=K`; against the same K sub-agents called inside the tool
(`agent.run`, in the parent's step). Models answer at once, so the numbers are the engine's overhead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from absurd_sdk import AsyncAbsurd
from bench_support import section_main, summary
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, setup
from pydantic_ai_absurd.worker import Worker, WorkerConfig

QUEUE = "bench_children"
START, END = "<!-- children-benchmark:start -->", "<!-- children-benchmark:end -->"


def researcher_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("a finding")])


def coordinator_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("research", {"n": 0}, tool_call_id="r1")])
    return ModelResponse(parts=[TextPart("done")])


def build(absurd: AsyncAbsurd, fan_out: int) -> None:
    researcher = AbsurdAgent(Agent(FunctionModel(researcher_model), name="researcher"), absurd)
    researcher.register_task()
    coordinator = AbsurdAgent(Agent(FunctionModel(coordinator_model), name="coordinator"), absurd)

    @coordinator.tool
    async def research(ctx: RunContext[dict[str, Any]], n: int) -> list[str]:
        prompts = [f"topic {i} of run {ctx.deps['run']}" for i in range(fan_out)]
        if ctx.deps["inline"]:
            return [(await researcher.run(p)).output for p in prompts]
        return [r.output for r in await asyncio.gather(*(researcher.run_as_child(p) for p in prompts))]

    @absurd.register_task(name="coordinate")
    async def coordinate(params: dict[str, Any], ctx: Any) -> str:
        return (await coordinator.run("go", deps=params)).output


async def measure(dsn: str, fan_out: int, concurrency: int, inline: bool, reps: int) -> dict[str, float]:
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    build(absurd, fan_out)
    config = WorkerConfig(concurrency=concurrency, handle_signals=False, poll_interval=0.01)
    worker = Worker(absurd, config)
    job = asyncio.ensure_future(worker.run())
    times: list[float] = []
    try:
        for rep in range(reps + 1):
            started = time.perf_counter()
            spawned = await absurd.spawn(
                "coordinate", {"run": f"{fan_out}-{concurrency}-{inline}-{rep}", "inline": inline}
            )
            while True:
                snapshot = await absurd.fetch_task_result(str(spawned["task_id"]))
                if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
                    break
                await asyncio.sleep(0.002)
            if snapshot.state != "completed":
                raise RuntimeError(f"parent ended {snapshot.state}: {snapshot.failure}")
            if rep:  # the first run warms up imports and connections
                times.append(time.perf_counter() - started)
    finally:
        worker.request_stop()
        await job
        await absurd.close()
    return summary(times)


async def bench_children(dsn: str, quick: bool) -> list[tuple[str, dict[str, float]]]:
    await setup(dsn, queues=[QUEUE])
    reps = 5 if quick else 20
    rows: list[tuple[str, dict[str, float]]] = []
    for fan_out in (1, 3, 10):
        rows.append(
            (f"{fan_out} sub-agent(s) inside the tool (`agent.run`)", await measure(dsn, fan_out, 1, True, reps))
        )
        rows.append((f"{fan_out} child task(s), `concurrency=1`", await measure(dsn, fan_out, 1, False, reps)))
        if fan_out > 1:
            rows.append(
                (f"{fan_out} child tasks, `concurrency={fan_out}`", await measure(dsn, fan_out, fan_out, False, reps))
            )
    return rows


def render(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        START,
        "## Child tasks",
        "",
        "A parent task whose tool fans out to K sub-agents, from spawn to the parent's completion, on one in-process",
        "worker (`benchmarks/bench_children.py`; models answer at once, so this is the engine's overhead). With",
        "`concurrency=1` the parent runs, suspends, its children run one after the other, and the parent resumes.",
        "Measured on the shared 2-core machine of the Setup section, shared with other work (load average 1.5 to 3 during the run):",
        "compare the rows with each other rather than with the other sections.",
        "",
        "| scenario | median | p10 | p90 |",
        "|---|---|---|---|",
    ]
    for label, stats in rows:
        lines.append(
            f"| {label} | {stats['median'] * 1000:.0f} ms | {stats['p10'] * 1000:.0f} ms | {stats['p90'] * 1000:.0f} ms |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    section_main(__doc__, "bench_children", bench_children, render, START, END)


if __name__ == "__main__":
    main()
