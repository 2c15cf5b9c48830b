"""Worker processes for the crash-matrix and chaos tests (`tests/system/test_crash_matrix.py`, `tests/system/test_chaos.py`).

Two modes:

`python -m tests.helpers.apps.matrix_worker matrix <dsn> <queue> <state dir> <processes> <claim_timeout>`
    A fork server: imports everything once, then keeps `<processes>` forked children working the queue
    one task at a time (`work_batch(batch_size=1)`), and forks a replacement for every child that dies,
    so a SIGKILLed worker is replaced at once without paying Python's start-up again. Stops when the file
    `<state dir>/stop` exists. Each task's params say where to kill it: `{"label", "when", "k"}` with
    `when` in `"before"` / `"after"` and `at` a checkpoint name: the worker SIGKILLs itself just before
    (after) that checkpoint commits, keyed by name because parallel tool calls commit in no fixed order.
    It first writes which side effects had run without their checkpoint committed (`<label>/in_flight`):
    exactly those run again. Test code patches the SDK for this: `AsyncTaskContext.complete_step`.

`python -m tests.helpers.apps.matrix_worker chaos` (settings from `CHAOS_*` environment variables)
    A production worker (`run_worker`) with task `chaos`: a short agent run.

Every step body appends a line to a file (fsync'd) so side effects and model calls can be counted across
processes: `<state>/<label>/effects` (matrix) or `<state>/effects` (chaos). Committed checkpoint names go to
`<state>/<label>/commits`, and a killed worker writes `<state>/<label>/killed` (`<when> <checkpoint>`).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from absurd_sdk import AsyncAbsurd, AsyncTaskContext, get_current_context
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.apps._common import append, read_lines

# Seconds each parallel tool sleeps before its side effect: staggered so that at any commit only the
# committing call has run its side effect and not yet committed.
CHARGE_DELAYS = {1: 0.0, 2: 0.15, 3: 0.3}
SEND_DELAY = 0.2


def current_run_id() -> str:
    ctx = get_current_context()
    assert isinstance(ctx, AsyncTaskContext)
    return str(ctx._task["run_id"])  # pyright: ignore[reportPrivateUsage]


def effect_of(checkpoint: str) -> str | None:
    """The side effect a step body records, from the step's checkpoint name (None: no side effect)."""
    if "model.request" in checkpoint:
        _, _, count = checkpoint.partition("#")
        return f"model@{int(count) - 1 if count else 0}"
    if ".call_tool:" in checkpoint:
        return "tool@" + checkpoint.rsplit("@", 1)[1]
    return None


# ------------------------------------------------------------------------------------------- the agents
def matrix_agent(effects: contextvars.ContextVar[Path]) -> AbsurdAgent[None, str]:
    """Three model calls; three parallel side-effect tools; an MCP call in parallel with a side-effect tool."""
    # Imported here: fastmcp costs two seconds of CPU at start-up, which chaos-mode workers (started ten at a time)
    # do not need. Matrix mode imports it once in the parent, before it forks.
    from fastmcp import FastMCP
    from pydantic_ai.mcp import MCPToolset

    def record(effect: str) -> None:
        append(effects.get(), effect)

    server: FastMCP[Any] = FastMCP("weather")

    @server.tool
    def forecast(city: str) -> str:
        # Runs in the in-process server's own task; the label comes in the argument.
        label, _, call_id = city.partition("/")
        append(Path(os.environ["MATRIX_STATE"]) / label / "effects", f"tool@{call_id}")
        return f"sunny ({call_id})"

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        record(f"model@{turn}")
        if turn == 0:
            return ModelResponse(
                parts=[ToolCallPart("charge", {"amount": a}, tool_call_id=f"p{a}") for a in CHARGE_DELAYS]
            )
        if turn == 1:
            label = effects.get().parent.name
            return ModelResponse(
                parts=[
                    ToolCallPart("forecast", {"city": f"{label}/c-mcp"}, tool_call_id="c-mcp"),
                    ToolCallPart("send_receipt", {"to": "ops"}, tool_call_id="c-send"),
                ]
            )
        returns = [str(p.content) for m in messages for p in m.parts if p.part_kind == "tool-return"]
        return ModelResponse(parts=[TextPart(" | ".join(returns))])

    inner = Agent(
        FunctionModel(respond, model_name="scripted"),
        name="matrix",
        toolsets=[MCPToolset(server, id="weather")],
    )

    @inner.tool
    async def charge(ctx: RunContext[None], amount: int) -> str:
        await asyncio.sleep(CHARGE_DELAYS[amount])
        record(f"tool@{ctx.tool_call_id}")
        return f"receipt-{amount}"

    @inner.tool
    async def send_receipt(ctx: RunContext[None], to: str) -> str:
        await asyncio.sleep(SEND_DELAY)
        record(f"tool@{ctx.tool_call_id}")
        return f"sent to {to}"

    return AbsurdAgent(inner)


def chaos_agent(effects: Path, step_seconds: float) -> Callable[[str], Awaitable[str]]:
    """model -> side-effect tool -> model; every step body records `<task> <effect> <run_id>` when it starts
    (to `starts`, next to `effects`) and right before it returns (to `effects`)."""
    starts = effects.with_name("starts")
    task: contextvars.ContextVar[str] = contextvars.ContextVar("task")

    def record(effect: str, file: Path = effects) -> None:
        append(file, f"{task.get()} {effect} {current_run_id()}")

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        record(f"model@{turn}", starts)
        await asyncio.sleep(step_seconds)
        record(f"model@{turn}")
        if turn == 0:
            return ModelResponse(parts=[ToolCallPart("bump", {"n": 1}, tool_call_id="c-bump")])
        return ModelResponse(parts=[TextPart("bumped " + str(messages[-1].parts[0].content))])  # pyright: ignore

    inner = Agent(FunctionModel(respond, model_name="scripted"), name="chaos")

    @inner.tool
    async def bump(ctx: RunContext[None], n: int) -> int:
        record(f"tool@{ctx.tool_call_id}", starts)
        await asyncio.sleep(step_seconds)
        record(f"tool@{ctx.tool_call_id}")
        return n + 1

    agent = AbsurdAgent(inner)

    async def run(label: str) -> str:
        task.set(label)
        return (await agent.run("go")).output

    return run


# ------------------------------------------------------------------------------------------- matrix mode
SPEC: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("spec")


def patch_complete_step(state: Path) -> None:
    """Kill this process just before / after the checkpoint named `at` of the current task commits."""
    original = AsyncTaskContext.complete_step
    lock = asyncio.Lock()

    async def complete_step(self: AsyncTaskContext, handle: Any, value: Any) -> Any:
        spec = SPEC.get(None)
        if spec is None or handle.done:
            return await original(self, handle, value)
        folder = state / spec["label"]
        async with lock:  # parallel steps commit one at a time: the in-flight set at a kill is well defined
            here = handle.checkpoint_name == spec["at"]
            killed = folder / "killed"
            if spec["when"] == "before" and here and not killed.exists():
                kill(folder, f"before {handle.checkpoint_name}")
            result = await original(self, handle, value)
            append(folder / "commits", handle.checkpoint_name)
            if spec["when"] == "after" and here and not killed.exists():
                kill(folder, f"after {handle.checkpoint_name}")
            return result

    AsyncTaskContext.complete_step = complete_step  # type: ignore[method-assign]


def kill(folder: Path, what: str) -> None:
    """Record the side effects that ran but whose checkpoint has not committed, then die like an OOM kill."""
    ran = Counter(read_lines(folder / "effects"))
    ran.subtract(Counter(e for c in read_lines(folder / "commits") if (e := effect_of(c))))
    for effect in sorted((+ran).elements()):
        append(folder / "in_flight", effect)
    append(folder / "killed", what)
    os.kill(os.getpid(), signal.SIGKILL)


def matrix_child(dsn: str, queue: str, state: Path, claim_timeout: int, parent: int) -> None:
    effects: contextvars.ContextVar[Path] = contextvars.ContextVar("effects")

    async def work() -> None:
        patch_complete_step(state)
        agent = matrix_agent(effects)
        absurd = AsyncAbsurd(dsn, queue_name=queue)

        @absurd.register_task(name="matrix")
        async def run_matrix(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
            SPEC.set(params)
            effects.set(state / params["label"] / "effects")
            result = await agent.run("bill and report")
            return {"output": result.output, "requests": result.usage.requests}

        try:
            while not (state / "stop").exists() and os.getppid() == parent:
                await absurd.work_batch(worker_id=f"matrix-{os.getpid()}", claim_timeout=claim_timeout)
                await asyncio.sleep(0.02)
        finally:
            await absurd.close()

    asyncio.run(work())


def matrix_main(dsn: str, queue: str, state: Path, processes: int, claim_timeout: int) -> None:
    os.environ["MATRIX_STATE"] = str(state)
    import fastmcp  # noqa: F401  # loaded once here, before the children fork
    import pydantic_ai.mcp  # noqa: F401

    parent = os.getpid()
    children: set[int] = set()

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                matrix_child(dsn, queue, state, claim_timeout, parent)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)

    for _ in range(processes):
        fork()
    while not (state / "stop").exists():
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.discard(pid)
            append(state / "exits", str(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)))
            fork()
        else:
            time.sleep(0.02)
    for pid in children:
        os.waitpid(pid, 0)


# ------------------------------------------------------------------------------------------- chaos mode
def chaos_main() -> None:
    import logging

    from pydantic_ai_absurd.worker import run_worker

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
    env = os.environ
    state = Path(env["CHAOS_STATE"])
    absurd = AsyncAbsurd(env["CHAOS_DSN"], queue_name=env["CHAOS_QUEUE"])
    run = chaos_agent(state / "effects", float(env.get("CHAOS_STEP_SECONDS", "0.02")))

    @absurd.register_task(name="chaos")
    async def chaos(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        return {"output": await run(str(params["label"]))}

    async def main() -> None:
        try:
            await run_worker(
                absurd,
                concurrency=int(env.get("CHAOS_CONCURRENCY", "4")),
                claim_timeout=int(env.get("CHAOS_CLAIM_TIMEOUT", "2")),
                drain_timeout=float(env.get("CHAOS_DRAIN_TIMEOUT", "5")),
                poll_interval=0.05,
            )
        finally:
            await absurd.close()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "matrix":
        matrix_main(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        chaos_main()
