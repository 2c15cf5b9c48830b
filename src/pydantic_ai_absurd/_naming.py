"""Persisted step names: the compatibility data that lines a replay up with its checkpoints.

A step name is Pydantic AI's `JournalOperationNamer` name of the operation (agent, toolset and operation), with:

- the run scope: the agent segment is `agent` for the first run of that agent in a task execution and
  `agent~N` for the N-th, so concurrent runs of one agent in one task cannot take each other's steps;
- the tool name after `:` for tool calls and argument validation (MCP included);
- `@<tool_call_id>` on every tool-scoped step (tool call, argument validation, a capability operation
  called from a tool) and `@<event_kind>[@<tool_call_id>]` on event-handler steps.

Absurd numbers repeated names in the order they are met (`name`, `name#2`, ...); the tool call ID makes
tool-scoped names unique within a model response, so parallel tool calls replay by identity, not order.
Characters that would corrupt a name (`%`, `#`, `@`) are percent-escaped in labels and IDs, and refused
in agent names, toolset IDs and model IDs. So are those Postgres cannot store in a `text` column (NUL and
lone surrogates, as the percent-escapes of their UTF-8 bytes): a model may put them in a tool call ID.
"""

from __future__ import annotations

import re

from pydantic_ai.durable_exec import (
    CapabilityOperationId,
    DurableOperationId,
    EventStreamHandlerId,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.tools import RunContext

_FORBIDDEN_IN_IDENTIFIERS = re.compile(r"[#@~%\s\x00-\x1f\x7f]")
_ESCAPE_PATTERN = re.compile(r"[%#@\x00\ud800-\udfff]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def escape(segment: str) -> str:
    """Percent-escape the characters that carry meaning in a step name, and those `text` cannot store."""
    return _ESCAPE_PATTERN.sub(_percent, segment)


def check_identifier(kind: str, value: str) -> None:
    """Refuse an agent name, toolset ID or model ID that would corrupt persisted step names."""
    if not value:
        raise UserError(f"The {kind} must not be empty: it is part of the persisted Absurd step names.")
    bad = _FORBIDDEN_IN_IDENTIFIERS.search(value)
    if bad is not None:
        raise UserError(
            f"The {kind} {value!r} contains {bad.group()!r}, which would corrupt the Absurd step names "
            "built from it (`#` numbers repeated steps, `@` separates tool call IDs, `~` marks run "
            "ordinals). Use letters, digits and `-_.:/` only."
        )


def _run_context_in(cache_key: tuple[object, ...]) -> RunContext[object] | None:
    # Found by type, never by position: the layout of `cache_key` is private to Pydantic AI.
    for item in cache_key:
        if isinstance(item, RunContext):
            return item  # pyright: ignore[reportUnknownVariableType]
    return None


def _event_in(cache_key: tuple[object, ...]) -> object | None:
    for item in cache_key:
        if isinstance(getattr(item, "event_kind", None), str):
            return item
    return None


def step_name(
    invocation_name: str,
    *,
    operation_id: DurableOperationId,
    cache_key: tuple[object, ...],
    agent_name: str,
    run_prefix: str,
) -> str:
    """The persisted step name of one invocation (before Absurd's `#N` numbering)."""
    name = invocation_name
    if run_prefix != agent_name and name.startswith(f"{agent_name}__"):
        name = run_prefix + name[len(agent_name) :]
    if isinstance(operation_id, EventStreamHandlerId):
        event = _event_in(cache_key)
        if event is not None:
            name = f"{name}@{escape(str(getattr(event, 'event_kind')))}"  # noqa: B009
            tool_call_id = getattr(event, "tool_call_id", None)
            if isinstance(tool_call_id, str) and tool_call_id:
                name = f"{name}@{escape(tool_call_id)}"
        return name
    if isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId | CapabilityOperationId):
        run_context = _run_context_in(cache_key)
        if run_context is None:
            return name
        tool_name = run_context.tool_name
        if tool_name and not isinstance(operation_id, CapabilityOperationId):
            # `JournalOperationNamer` labels only non-MCP tool calls, and unescaped: label every tool step.
            name = name.removesuffix(f":{tool_name}")
            name = f"{name}:{escape(tool_name)}"
        if run_context.tool_call_id:
            name = f"{name}@{escape(run_context.tool_call_id)}"
    return name
