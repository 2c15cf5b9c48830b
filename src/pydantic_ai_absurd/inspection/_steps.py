"""Reading our checkpoints as agent steps: what a step name says, and what its stored value holds.

Step names are read by `pydantic_ai_absurd._step_names.StepName` (`support__model.request`,
`support~2__function_toolset__tools.call_tool:charge@call_1#2`, `support__external_event:approve`, ...);
the values are checkpoints read with `pydantic_ai_absurd._checkpoint.Checkpoint.read`, and a model
request's value is the serialized `ModelResponse`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_ai.messages import ModelResponse, TextPart, ThinkingPart, ToolCallPart

from .._checkpoint import Checkpoint
from .._digest import preview as _preview
from .._step_names import (
    CapabilityStep,
    ChildTaskStep,
    ConversationStep,
    EventHandlerStep,
    ExternalEventStep,
    GraphSleep,
    ModelStep,
    ProviderWait,
    RunStartTime,
    StepName,
    ToolsetStep,
)
from ._records import StepKind, TokenUsage

__all__ = ["ParsedName", "StepValue", "decode_value", "parse_step_name", "preview", "short_label"]

PREVIEW_LENGTH = 120
"""Characters kept in a preview (whitespace collapsed)."""

_response_adapter: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)


@dataclass(frozen=True)
class ParsedName:
    """What a step name says."""

    kind: StepKind
    agent: str | None = None
    run_ordinal: int | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    wait_name: str | None = None
    """For waits: the wait's name and its part (`ask`, `event`, `timed_out`)."""
    wait_part: str | None = None


def parse_step_name(name: str) -> ParsedName:
    """Classify the checkpoint `name` (Absurd's `#N` repeat suffix included), read by `StepName.parse`."""
    step = StepName.parse(name)
    scope = step.operation.model_step if isinstance(step.operation, ProviderWait) else step
    if isinstance(step.operation, ChildTaskStep) and step.operation.call_site is not None:
        scope = step.operation.call_site
    agent, ordinal = scope.agent, scope.ordinal if scope.agent is not None else None
    operation = step.operation
    kind = _kind(operation)
    if isinstance(operation, RunStartTime):
        ordinal = operation.run_number or ordinal
    if isinstance(operation, ExternalEventStep):
        return ParsedName(kind, agent, ordinal, wait_name=operation.name, wait_part=operation.part)
    tool_name = operation.tool_name if isinstance(operation, ToolsetStep) else None
    return ParsedName(kind, agent, ordinal, tool_name=tool_name, tool_call_id=step.tool_call_id)


def _kind(operation: object) -> StepKind:
    simple: dict[type, StepKind] = {
        ProviderWait: "provider_wait",
        EventHandlerStep: "event_handler",
        ExternalEventStep: "wait_for_input",
        RunStartTime: "run_start_time",
        GraphSleep: "sleep",
        CapabilityStep: "capability",
        ChildTaskStep: "child_task",
    }
    if type(operation) in simple:
        return simple[type(operation)]
    if isinstance(operation, ModelStep):
        return "model_request" if operation.operation in {"request", "request_stream"} else "other"
    if isinstance(operation, ConversationStep):
        return "conversation_load" if operation.action == "load" else "conversation_save"
    if isinstance(operation, ToolsetStep):
        if operation.operation == "call_tool":
            return "mcp_call" if operation.family == "mcp" else "tool_call"
        return operation.operation
    return "other"


def short_label(name: str) -> str:
    """`name` shortened for a table: `support call_tool:charge@call_1`, `support~2 model.request#2`."""
    return StepName.parse(name).label()


def preview(value: object, limit: int = PREVIEW_LENGTH) -> str:
    """A one-line preview of `value` (text as is, anything else as JSON), at most `limit` characters."""
    return _preview(value, limit)


@dataclass(frozen=True)
class StepValue:
    """What a checkpoint holds, decoded."""

    value: Any = None
    error: str | None = None
    model_name: str | None = None
    usage: TokenUsage | None = None
    tool_calls: tuple[tuple[str, str, Any], ...] = ()
    """`(tool_call_id, tool_name, args)` of each tool call part in a model response."""
    preview: str | None = None


def decode_value(state: object, kind: StepKind) -> StepValue:
    """Decode a checkpoint's state; model responses through Pydantic AI's message adapter."""
    checkpoint = Checkpoint.read(state)
    if checkpoint.error is not None:
        return StepValue(error=checkpoint.error, preview=preview(checkpoint.error))
    text = checkpoint.text
    if text is None:
        return StepValue(value=state, preview=None if state is None else preview(state))
    if kind == "model_request":
        return _model_response(text)
    value: Any = json.loads(text)
    shown: object = value
    if isinstance(value, dict):
        fields = cast(dict[str, object], value)
        if fields.get("kind") == "tool_return" and "result" in fields:
            shown = fields["result"]
    return StepValue(value=value, preview=None if shown is None else preview(shown))


def _model_response(text: str) -> StepValue:
    try:
        response = _response_adapter.validate_json(text)
    except ValidationError:
        value: object = json.loads(text)  # invalid, or lone surrogates (which pydantic-core refuses in JSON)
        return StepValue(value=value, preview=preview(value))
    usage = response.usage
    pieces: list[str] = []
    calls: list[tuple[str, str, Any]] = []
    for part in response.parts:
        if isinstance(part, TextPart):
            pieces.append(part.content)
        elif isinstance(part, ToolCallPart):
            try:
                args: Any = part.args_as_dict() if part.args else {}
            except ValueError:  # arguments the model sent as invalid JSON
                args = part.args
            calls.append((part.tool_call_id, part.tool_name, args))
            pieces.append(f"→ {part.tool_name}({preview(args, 60)})")
        elif isinstance(part, ThinkingPart) and not pieces:
            pieces.append(f"(thinking) {part.content}")
    return StepValue(
        value=response,
        model_name=response.model_name,
        usage=TokenUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, 1),
        tool_calls=tuple(calls),
        preview=preview(" ".join(pieces)) if pieces else None,
    )
