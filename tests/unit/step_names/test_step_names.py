"""The full set of persisted step names over every kind of operation, pinned: they are compatibility data.

Changing any name below strands in-flight tasks, whose checkpoints would no longer be found on resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, CustomEvent, FunctionToolset, RunContext
from pydantic_ai.capabilities import AbstractCapability, durable_operation
from pydantic_ai.messages import AgentStreamEvent, TextPart, ToolCallPart
from pydantic_ai.toolsets import DynamicToolset

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.agents import Script, SimulatedCrash, run_until_done
from tests.helpers.sql import checkpoint_names

if TYPE_CHECKING:
    from fastmcp import FastMCP
    from pydantic_ai.mcp import MCPToolset


@dataclass(kw_only=True)
class Progress(CustomEvent):
    done: int


class Audit(AbstractCapability[None]):
    id = "audit"

    @durable_operation(name="record")
    async def record(self, ctx: RunContext[None], message: str) -> str:
        return f"recorded {message}"


def mcp_toolset(server: FastMCP[Any]) -> MCPToolset:
    from pydantic_ai.mcp import MCPToolset  # imported here: half a second, for this one test

    return MCPToolset(server, id="weather", include_instructions=True)


def mcp_server(sessions: list[int]) -> FastMCP[Any]:
    from fastmcp import FastMCP  # imported here: half a second, for this one test

    @asynccontextmanager
    async def lifespan(server: FastMCP[Any]) -> AsyncIterator[None]:
        sessions.append(1)
        yield

    server: FastMCP[Any] = FastMCP("weather", instructions="Ask about the weather.", lifespan=lifespan)

    @server.tool
    def forecast(city: str) -> str:
        return f"sunny in {city}"

    return server


PINNED_NAMES = {
    "matrix__dynamic_toolset__dyn.call_tool:dynamic_echo@c-dyn",
    "matrix__dynamic_toolset__dyn.get_tools",
    "matrix__dynamic_toolset__dyn.get_tools#2",
    "matrix__dynamic_toolset__dyn.get_tools#3",
    "matrix__event_stream_handler@custom@c-emit",
    "matrix__event_stream_handler@custom@c-emit#2",
    "matrix__event_stream_handler@function_tool_call@c-audit",
    "matrix__event_stream_handler@function_tool_call@c-checked",
    "matrix__event_stream_handler@function_tool_call@c-dyn",
    "matrix__event_stream_handler@function_tool_call@c-emit",
    "matrix__event_stream_handler@function_tool_call@c-mcp",
    "matrix__event_stream_handler@function_tool_call@c-pure",
    "matrix__event_stream_handler@function_tool_call@c-shout",
    "matrix__event_stream_handler@function_tool_call@c-sub",
    "matrix__event_stream_handler@function_tool_result@c-audit",
    "matrix__event_stream_handler@function_tool_result@c-checked",
    "matrix__event_stream_handler@function_tool_result@c-dyn",
    "matrix__event_stream_handler@function_tool_result@c-emit",
    "matrix__event_stream_handler@function_tool_result@c-mcp",
    "matrix__event_stream_handler@function_tool_result@c-pure",
    "matrix__event_stream_handler@function_tool_result@c-shout",
    "matrix__event_stream_handler@function_tool_result@c-sub",
    "matrix__function_toolset__<agent>.call_tool:ask_sub_agent@c-sub",
    "matrix__function_toolset__<agent>.call_tool:audit@c-audit",
    "matrix__function_toolset__<agent>.call_tool:checked@c-checked",
    "matrix__function_toolset__<agent>.call_tool:shout@c-shout",
    "matrix__function_toolset__<agent>.validate_args:checked@c-checked",
    "matrix__function_toolset__extra.call_tool:emit_progress@c-emit",
    "matrix__mcp_server__weather.call_tool:forecast@c-mcp",
    "matrix__mcp_server__weather.get_instructions",
    "matrix__mcp_server__weather.get_instructions#2",
    "matrix__mcp_server__weather.get_instructions#3",
    "matrix__mcp_server__weather.get_tools",
    "matrix__model.request_stream",
    "matrix__model.request_stream#2",
    "matrix__model.request_stream#3",
    "matrix__run.start_time@T:matrix:1",
    "matrix~2__dynamic_toolset__dyn.get_tools",
    "matrix~2__mcp_server__weather.get_instructions",
    "matrix~2__mcp_server__weather.get_tools",
    "matrix~2__model.request_stream.alt",
}


CALLS = ["shout", "checked", "emit_progress", "forecast", "dynamic_echo", "audit", "pure", "ask_sub_agent"]


def build(
    script: Script, sessions: list[int], counters: dict[str, int], events: list[str]
) -> tuple[AbsurdAgent[None, str], Agent[None, str]]:
    extra = FunctionToolset[None](id="extra")

    @extra.tool
    async def emit_progress(ctx: RunContext[None]) -> str:
        counters["emit_progress"] = counters.get("emit_progress", 0) + 1
        await ctx.emit(Progress(done=1))
        await ctx.emit(Progress(done=2))
        return "emitted"

    def dynamic_tools(ctx: RunContext[None]) -> FunctionToolset[None]:
        toolset = FunctionToolset[None]()

        @toolset.tool_plain
        def dynamic_echo(text: str) -> str:
            return text

        return toolset

    async def handler(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in stream:
            events.append(f"{event.event_kind}@{getattr(event, 'tool_call_id', '') or ''}")

    sub_script = Script(turns=[lambda _: [TextPart("sub-answer")]])
    sub_agent = Agent(sub_script.model(), name="sub")
    inner = Agent(
        script.model(),
        name="matrix",
        toolsets=[
            extra,
            mcp_toolset(mcp_server(sessions)),
            DynamicToolset[None](dynamic_tools, id="dyn"),
        ],
        capabilities=[Audit()],
    )

    @inner.tool_plain
    def shout(text: str) -> str:
        counters["shout"] = counters.get("shout", 0) + 1
        return text.upper()

    def check(ctx: RunContext[None], amount: int) -> None:
        return None

    @inner.tool(args_validator=check)
    def checked(ctx: RunContext[None], amount: int) -> int:
        return amount * 2

    @inner.tool
    async def audit(ctx: RunContext[None]) -> str:
        capability = next(c for c in ctx.capabilities.values() if isinstance(c, Audit))
        return await capability.record(ctx, "hello")

    @inner.tool_plain(metadata={"absurd": False})
    def pure(x: int) -> int:
        counters["pure"] = counters.get("pure", 0) + 1
        return x + 1

    @inner.tool
    async def ask_sub_agent(ctx: RunContext[None]) -> str:
        return (await sub_agent.run("q")).output

    return AbsurdAgent(
        inner, models={"alt": Script(turns=[lambda _: [TextPart("alt")]]).model()}, event_stream_handler=handler
    ), sub_agent


def matrix_script() -> Script:
    return Script(
        turns=[
            lambda _: [
                ToolCallPart("shout", {"text": "hi"}, tool_call_id="c-shout"),
                ToolCallPart("checked", {"amount": 2}, tool_call_id="c-checked"),
                ToolCallPart("emit_progress", {}, tool_call_id="c-emit"),
                ToolCallPart("forecast", {"city": "Oslo"}, tool_call_id="c-mcp"),
                ToolCallPart("dynamic_echo", {"text": "echo"}, tool_call_id="c-dyn"),
                ToolCallPart("audit", {}, tool_call_id="c-audit"),
                ToolCallPart("pure", {"x": 1}, tool_call_id="c-pure"),
            ],
            lambda _: [ToolCallPart("ask_sub_agent", {}, tool_call_id="c-sub")],
            lambda messages: [
                TextPart(
                    ";".join(
                        str(part.content)
                        for message in messages
                        for part in message.parts
                        if part.part_kind == "tool-return"
                    )
                )
            ],
        ]
    )


async def test_full_matrix_of_step_names_is_pinned_and_replays(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    script = matrix_script()
    sessions: list[int] = []
    counters: dict[str, int] = {}
    events: list[str] = []
    agent, _ = build(script, sessions, counters, events)
    crash = {"armed": True}

    @absurd_client.register_task(name="matrix")
    async def task(params: Any, ctx: Any) -> list[str]:
        async with agent.run_stream("go", timeout=300) as stream:
            output = await stream.get_output()
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the run, before the second one")
        alt = await agent.run("alt", model="alt", message_history=[])
        return [output, alt.output]

    spawned = await absurd_client.spawn("matrix", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert snapshot.result == [
        "HI;4;emitted;sunny in Oslo;echo;recorded hello;2;sub-answer",
        "alt",
    ]
    task_id = str(spawned["task_id"])
    names = {name.replace(task_id, "T") for name in await checkpoint_names(absurd_dsn, absurd_queue, task_id)}
    assert names == PINNED_NAMES
    # Each side effect ran once although the whole run was replayed; the opted-out pure tool ran again.
    assert counters == {"shout": 1, "emit_progress": 1, "pure": 2}
    assert script.calls == 3
    # Every event reached the durable handler exactly once, custom events emitted inside a tool included.
    tool_events = [e for e in events if e.split("@")[0] in {"function_tool_call", "function_tool_result", "custom"}]
    assert sorted(tool_events) == sorted(
        [f"function_tool_call@c-{n}" for n in ("shout", "checked", "emit", "mcp", "dyn", "audit", "pure", "sub")]
        + [f"function_tool_result@c-{n}" for n in ("shout", "checked", "emit", "mcp", "dyn", "audit", "pure", "sub")]
        + ["custom@c-emit", "custom@c-emit"]
    )
    # Model events are delivered live inside the model steps, so replayed steps do not repeat them.
    assert events.count("final_result@") == 2
    # One MCP session per agent run that needed the server (the first run, then the `alt` run); the replay
    # of the first run opened none: its discovery and calls all came from Postgres.
    assert len(sessions) == 2
