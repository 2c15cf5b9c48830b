"""Agents for the inbox tests: every source of a request, with call counts kept in memory of this process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic_ai import Agent, RunContext, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import (
    DeferredToolResultsEvent,
    ModelMessage,
    TextPart,
    ToolCallPart,
)

from pydantic_ai_absurd import AbsurdAgent, Inbox
from tests.helpers.agents import Script


def tool_outcomes(messages: list[ModelMessage]) -> str:
    """What the tools told the model, one `name=content` per return, in order."""
    return "; ".join(
        f"{part.tool_name}={part.content}"
        for message in messages
        for part in message.parts
        if part.part_kind in ("tool-return", "retry-prompt")
    )


@dataclass
class Counters:
    """How often each tool body ran, and the `DeferredToolResultsEvent`s the run reported."""

    runs: dict[str, int] = field(default_factory=dict[str, int])
    results_events: list[DeferredToolResultsEvent] = field(default_factory=list[DeferredToolResultsEvent])

    def ran(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1


def approval_agent(
    inbox: Inbox,
    *,
    calls: list[tuple[str, dict[str, Any], str]] | None = None,
    timeout: timedelta | None = None,
    output_type: Any = str,
    with_request_input: bool = True,
) -> tuple[AbsurdAgent[Any, Any], Script, Counters]:
    """`delete_file` needs approval (`requires_approval=True`); `refund` raises `ApprovalRequired` above 100."""
    counters = Counters()
    first = calls or [("delete_file", {"path": "/tmp/a"}, "d1")]
    script = Script(
        turns=[
            lambda _: [ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in first],
            lambda messages: [TextPart(tool_outcomes(messages))],
        ]
    )

    async def delete_file(path: str) -> str:
        counters.ran("delete_file")
        return f"deleted {path}"

    async def refund(ctx: RunContext[Any], amount: int) -> str:
        from pydantic_ai.exceptions import ApprovalRequired

        if amount > 100 and not ctx.tool_call_approved:
            raise ApprovalRequired(metadata={"reason": "large refund"})
        counters.ran("refund")
        return f"refunded {amount}"

    async def lookup(ctx: RunContext[Any], key: str) -> str:
        from pydantic_ai.exceptions import CallDeferred

        raise CallDeferred(metadata={"key": key})

    async def on_event(ctx: RunContext[Any], stream: Any) -> None:
        async for event in stream:
            if isinstance(event, DeferredToolResultsEvent):
                counters.results_events.append(event)

    capabilities: list[Any] = []
    if with_request_input:
        capabilities.append(HandleDeferredToolCalls(inbox.ask, timeout=timeout, name="approve"))
    inner = Agent(
        script.model(),
        name="ops",
        output_type=output_type,
        tools=[Tool(delete_file, requires_approval=True), Tool(refund), Tool(lookup)],
        capabilities=capabilities,
        deps_type=dict,
    )
    return AbsurdAgent(inner, event_stream_handler=on_event), script, counters
