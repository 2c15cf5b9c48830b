"""Reading our checkpoints as agent steps: what a step name says, and what its stored value holds.

The step names are the ones `pydantic_ai_absurd._naming` documents (`support__model.request`,
`support~2__function_toolset__tools.call_tool:charge@call_1#2`, `support__external_event:approve`, ...);
the values are `{"json": "<text>", ...}` checkpoints (`pydantic_ai_absurd._checkpoint`), and a model
request's value is the serialized `ModelResponse`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_ai.messages import ModelResponse, TextPart, ThinkingPart, ToolCallPart

from .._checkpoint import ERROR_KEY, value_text
from .._provider_waits import PROVIDER_WAIT_SUFFIX
from ._records import StepKind, TokenUsage

__all__ = ["ParsedName", "StepValue", "decode_value", "parse_step_name", "preview", "short_label"]

PREVIEW_LENGTH = 120
"""Characters kept in a preview (whitespace collapsed)."""

_REPEAT = re.compile(r"#(\d+)$")
_AGENT = re.compile(r"^(?P<agent>[^_~#@%\s][^~#@%\s]*?)(?:~(?P<ordinal>\d+))?__(?P<rest>.+)$")
_TOOLSET = re.compile(
    r"^(?P<family>mcp_server|[a-z]+_toolset)__(?P<toolset>.+?)\."
    r"(?P<op>call_tool|validate_args|get_tools|get_instructions)(?::(?P<tool>[^@]*))?(?:@(?P<call>.*))?$"
)
_UNESCAPES = {"%25": "%", "%23": "#", "%40": "@"}
_UNESCAPE = re.compile(r"%(?:25|23|40)")

_response_adapter: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(lambda match: _UNESCAPES[match.group()], text)


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
    """Classify the checkpoint `name` (Absurd's `#N` repeat suffix included)."""
    base = _REPEAT.sub("", name)
    match = _AGENT.match(base)
    if match is None:
        return ParsedName("other")
    agent = match.group("agent")
    ordinal = int(match.group("ordinal") or 1)
    rest = match.group("rest")
    if rest.endswith(PROVIDER_WAIT_SUFFIX):  # `<model step name, escaped>.provider_wait`
        return ParsedName("provider_wait", agent, ordinal)
    if rest.startswith(("model.request", "model.request_stream")):
        return ParsedName("model_request", agent, ordinal)
    if rest.startswith("model."):
        return ParsedName("other", agent, ordinal)
    if rest.startswith("event_stream_handler"):
        _, _, detail = rest.partition("@")
        _, _, call = detail.partition("@")
        return ParsedName("event_handler", agent, ordinal, tool_call_id=_unescape(call) if call else None)
    if rest.startswith("external_event:"):
        wait = rest[len("external_event:") :]
        part = "ask"
        for suffix in (".timed_out", ".event"):
            if wait.endswith(suffix):
                wait, part = wait[: -len(suffix)], suffix[1:]
        return ParsedName("wait_for_input", agent, ordinal, wait_name=_unescape(wait), wait_part=part)
    if rest.startswith("run.start_time@"):
        run_id = _unescape(rest[len("run.start_time@") :])
        tail = run_id.rpartition(":")[2]
        return ParsedName("run_start_time", agent, int(tail) if tail.isdigit() else ordinal)
    if rest == "graph.sleep":
        return ParsedName("sleep", agent, ordinal)
    if rest.startswith("capability__"):
        _, _, call = rest.partition("@")
        return ParsedName("capability", agent, ordinal, tool_call_id=_unescape(call) if call else None)
    toolset = _TOOLSET.match(rest)
    if toolset is None:
        return ParsedName("other", agent, ordinal)
    op = toolset.group("op")
    kind: StepKind
    if op == "call_tool":
        kind = "mcp_call" if toolset.group("family") == "mcp_server" else "tool_call"
    else:
        kind = cast(StepKind, op)
    tool, call = toolset.group("tool"), toolset.group("call")
    return ParsedName(
        kind,
        agent,
        ordinal,
        tool_name=_unescape(tool) if tool else None,
        tool_call_id=_unescape(call) if call else None,
    )


_TOOLSET_PART = re.compile(
    r"__(?:mcp_server|[a-z]+_toolset)__.+?\.(?=call_tool|validate_args|get_tools|get_instructions)"
)


def short_label(name: str) -> str:
    """`name` shortened for a table: `support call_tool:charge@call_1`, `support~2 model.request#2`."""
    return _TOOLSET_PART.sub("__", name, count=1).replace("__", " ", 1)


def preview(value: object, limit: int = PREVIEW_LENGTH) -> str:
    """A one-line preview of `value` (text as is, anything else as JSON), at most `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    if not isinstance(state, dict):
        return StepValue(value=state, preview=None if state is None else preview(state))
    entries = cast(dict[str, object], state)
    error = entries.get(ERROR_KEY)
    if isinstance(error, str):
        return StepValue(error=error, preview=preview(error))
    text = value_text(entries)
    if text is None:
        return StepValue(value=entries, preview=preview(entries))
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
