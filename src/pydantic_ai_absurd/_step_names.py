"""`StepName`: the one codec of persisted step names, which formats every name written and parses every name read.

A name is `<agent>[~N]__<operation>[#N]` (the agent segment, the run ordinal for the N-th run of that agent in
a task execution, Absurd's counter of repeated names), or `<model step, escaped>.provider_wait[#N]`, or a
step of the user's own (any other text). The operations:

- `model.request[.<model id>]`, `model.request_stream`, `model.count_tokens`, `model.compact_messages`,
  `model.cancel_suspended_response` (the model ID only when it is not the default model);
- `<family>__<toolset id>.<op>[:<tool name>][@<tool call id>]`, family `function_toolset`, `dynamic_toolset`
  or `mcp_server`, op `call_tool`, `validate_args`, `get_tools` or `get_instructions`;
- `capability__<capability id>.<operation>[@<tool call id>]`;
- `event_stream_handler[@<event kind>[@<tool call id>]]`;
- `run.start_time@<run id>`, `graph.sleep`, `external_event:<wait name>[.event|.timed_out]`,
  `conversation_load@<conversation id>`, `conversation_save@<conversation id>`.

A child task of `run_as_child`: `[<escaped step that started it>.]child_task:<task>:<n>` (its end) and `child_event:`.

Tool names, tool call IDs, event kinds, wait names, run IDs and conversation IDs are percent-escaped
(`escape`: `%`, `#`, `@`, and NUL and lone surrogates, which Postgres cannot store); agent names, toolset
IDs and model IDs are checked instead (`_naming.check_identifier`).
`parse` is total: a name it cannot read as one of these is an `OtherStep`, and `parse(name).format() == name`
holds for every string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ._step_kinds import (
    MODEL_OPERATIONS,
    CapabilityStep,
    ChildPart,
    ChildTaskStep,
    ConversationStep,
    EventHandlerStep,
    ExternalEventStep,
    GraphSleep,
    ModelOperation,
    ModelStep,
    Operation,
    OtherStep,
    ProviderWait,
    RunStartTime,
    ToolsetOperation,
    ToolsetStep,
    WaitPart,
)

__all__ = [
    "CapabilityStep",
    "ChildPart",
    "ChildTaskStep",
    "ConversationStep",
    "EventHandlerStep",
    "ExternalEventStep",
    "GraphSleep",
    "ModelOperation",
    "ModelStep",
    "Operation",
    "OtherStep",
    "ProviderWait",
    "RunStartTime",
    "StepName",
    "ToolsetOperation",
    "ToolsetStep",
    "WaitPart",
    "escape",
    "run_prefix",
    "unescape",
]

_REPEAT = re.compile(r"#([2-9]|[1-9][0-9]+)\Z")
_ORDINAL = re.compile(r"~([2-9]|[1-9][0-9]+)\Z")
_AGENT = re.compile(r"[^~#@%\s]+")
_TOOLSET = re.compile(
    r"(?P<family>mcp_server|[a-z]+_toolset)__(?P<toolset>[^#@%\s]+?)\."
    r"(?P<op>call_tool|validate_args|get_tools|get_instructions)(?::(?P<tool>[^@]*))?(?:@(?P<call>.*))?",
    re.DOTALL,  # a tool call ID is the model's text: it may hold line breaks
)
_WAIT_PARTS: tuple[WaitPart, ...] = ("event", "timed_out")
_PROVIDER_WAIT = ".provider_wait"
_CHILD_MARKERS: dict[ChildPart, str] = {"result": "child_task:", "event": "child_event:"}
_TOOLSET_OPERATIONS: dict[str, ToolsetOperation] = {
    "call_tool": "call_tool",
    "validate_args": "validate_args",
    "get_tools": "get_tools",
    "get_instructions": "get_instructions",
}
_ESCAPE = re.compile(r"[%#@\x00\ud800-\udfff]")
# What `escape` writes: `%25`, `%23`, `%40`, `%00`, and the UTF-8 bytes of a lone surrogate (`ED A0..BF 80..BF`).
_UNESCAPE = re.compile(r"%(?:25|23|40|00)|%ED%[AB][0-9A-F]%[89AB][0-9A-F]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def escape(segment: str) -> str:
    """Percent-escape the characters that carry meaning in a step name (`%#@`), and those `text` cannot store."""
    return _ESCAPE.sub(_percent, segment)


def unescape(segment: str) -> str:
    """The text `escape` was given: the inverse of `escape`."""
    return _UNESCAPE.sub(
        lambda match: bytes.fromhex(match.group().replace("%", "")).decode("utf-8", "surrogatepass"), segment
    )


@dataclass(frozen=True)
class StepName:
    """A persisted step name, formatted by `format` and read back by `parse`."""

    operation: Operation
    agent: str | None = None
    """The agent segment; None for a provider wait (its model step has one) and for a step of the user's own."""
    ordinal: int = 1
    """Which run of the agent in the task execution (`agent~N`)."""
    repeat: int = 1
    """Absurd's counter of repeated names (`#N`); 1 for the first (unnumbered) one."""

    @property
    def run_prefix(self) -> str | None:
        """The agent segment as written (`agent`, `agent~2`), that of the model step for a provider wait."""
        if isinstance(self.operation, ProviderWait):
            return self.operation.model_step.run_prefix
        if isinstance(self.operation, ChildTaskStep):
            call_site = self.operation.call_site
            return None if call_site is None else call_site.run_prefix
        return None if self.agent is None else run_prefix(self.agent, self.ordinal)

    @property
    def tool_call_id(self) -> str | None:
        """The tool call a tool-scoped step belongs to (tool call, validation, capability, tool event)."""
        operation = self.operation
        if isinstance(operation, ToolsetStep | CapabilityStep | EventHandlerStep):
            return operation.tool_call_id
        return None

    def first(self) -> StepName:
        """The name without Absurd's `#N`: the name the step was begun with."""
        return replace(self, repeat=1)

    def operation_text(self) -> str:
        """The name without its agent segment (and with its `#N`)."""
        text = _format_operation(self.operation)
        return text if self.repeat == 1 else f"{text}#{self.repeat}"

    def label(self) -> str:
        """The name shortened for a table: `support call_tool:charge@call_1`, `support~2 model.request#2`."""
        if self.agent is None:
            return self.format().replace(
                "__", " ", 1
            )  # a provider wait starts with the agent segment of its model step
        text = self.operation_text()
        if isinstance(self.operation, ToolsetStep):
            text = text.partition(f"__{self.operation.toolset_id}.")[2]
        return f"{self.run_prefix} {text}"

    def format(self) -> str:
        """The persisted name."""
        text = self.operation_text()
        prefix = self.run_prefix if not isinstance(self.operation, ProviderWait | ChildTaskStep) else None
        return text if prefix is None else f"{prefix}__{text}"

    @classmethod
    def parse(cls, name: str) -> StepName:
        """Read `name` (any string: a name of no known kind is an `OtherStep`)."""
        base, repeat = name, 1
        numbered = _REPEAT.search(name)
        if numbered is not None:
            base, repeat = name[: numbered.start()], int(numbered.group(1))
        parsed = _parse_base(base)
        if parsed is not None:
            parsed = replace(parsed, repeat=repeat)
            if parsed.format() == name:  # escapes written otherwise than `escape` writes them are not ours
                return parsed
        return StepName(OtherStep(base), repeat=repeat)


def run_prefix(agent: str, ordinal: int) -> str:
    """The agent segment of the step names of the `ordinal`-th run of `agent`: `agent`, then `agent~2`, ..."""
    return agent if ordinal == 1 else f"{agent}~{ordinal}"


def _format_operation(operation: Operation) -> str:
    match operation:
        case ModelStep(operation=op, model_id=model_id):
            return f"model.{op}" + ("" if model_id is None else f".{model_id}")
        case ToolsetStep(family=family, toolset_id=toolset_id, operation=op, tool_name=tool, tool_call_id=call):
            text = f"{'mcp_server' if family == 'mcp' else f'{family}_toolset'}__{toolset_id}.{op}"
            text += "" if tool is None else f":{escape(tool)}"
            return text + _call(call)
        case CapabilityStep(capability_id=capability_id, operation=op, tool_call_id=call):
            return f"capability__{capability_id}.{op}{_call(call)}"
        case EventHandlerStep(event_kind=kind, tool_call_id=call):
            return "event_stream_handler" + ("" if kind is None else f"@{escape(kind)}{_call(call)}")
        case RunStartTime(run_id=run_id):
            return f"run.start_time@{escape(run_id)}"
        case GraphSleep():
            return "graph.sleep"
        case ExternalEventStep(name=wait, part=part):
            return f"external_event:{escape(wait)}" + ("" if part == "ask" else f".{part}")
        case ConversationStep(action=action, conversation_id=conversation_id):
            return f"conversation_{action}@{escape(conversation_id)}"
        case ProviderWait(model_step=model_step):
            return escape(model_step.format()) + _PROVIDER_WAIT
        case ChildTaskStep(call_site=call_site, task_name=task_name, occurrence=occurrence, part=part):
            site = "" if call_site is None else f"{escape(call_site.format())}."
            return f"{site}{_CHILD_MARKERS[part]}{escape(task_name)}:{occurrence}"
        case OtherStep(text=text):
            return text


def _call(tool_call_id: str | None) -> str:
    return "" if tool_call_id is None else f"@{escape(tool_call_id)}"


def _parse_base(base: str) -> StepName | None:
    """The name `base` (without `#N`) of a known kind, or None."""
    if base.endswith(_PROVIDER_WAIT):
        model_step = StepName.parse(unescape(base.removesuffix(_PROVIDER_WAIT)))
        if isinstance(model_step.operation, ModelStep) and model_step.agent is not None:
            return StepName(ProviderWait(model_step))
    child = _parse_child(base)
    if child is not None:
        return StepName(child)
    start = 0
    fallback: StepName | None = None
    # An agent name may hold `__`: the first split whose operation is known wins.
    while (split := base.find("__", start)) != -1:
        start = split + 1
        head, rest = base[:split], base[split + 2 :]
        ordinal = 1
        numbered = _ORDINAL.search(head)
        if numbered is not None:
            head, ordinal = head[: numbered.start()], int(numbered.group(1))
        if not rest or _AGENT.fullmatch(head) is None:
            continue
        operation = _parse_operation(rest)
        if operation is not None:
            return StepName(operation, head, ordinal)
        fallback = fallback or StepName(OtherStep(rest), head, ordinal)
    return fallback


def _parse_child(base: str) -> ChildTaskStep | None:
    for part, marker in _CHILD_MARKERS.items():
        at = base.rfind(f".{marker}")
        if base.startswith(marker):
            site, rest = None, base.removeprefix(marker)
        elif at != -1:
            site, rest = StepName.parse(unescape(base[:at])), base[at + len(marker) + 1 :]
        else:
            continue
        task_name, _, occurrence = rest.rpartition(":")
        if occurrence.isdigit() and not occurrence.startswith("0"):
            return ChildTaskStep(site, unescape(task_name), int(occurrence), part)
    return None


def _parse_operation(rest: str) -> Operation | None:
    if rest.startswith("model."):
        return _parse_model(rest.removeprefix("model."))
    if rest == "event_stream_handler":
        return EventHandlerStep()
    if rest.startswith("event_stream_handler@"):
        detail = rest.removeprefix("event_stream_handler@")
        kind, _, call = detail.partition("@")
        return EventHandlerStep(unescape(kind), unescape(call) if "@" in detail else None)
    if rest.startswith("external_event:"):
        wait = rest.removeprefix("external_event:")
        for part in _WAIT_PARTS:
            if wait.endswith(f".{part}"):
                return ExternalEventStep(unescape(wait.removesuffix(f".{part}")), part)
        return ExternalEventStep(unescape(wait))
    if rest.startswith("run.start_time@"):
        return RunStartTime(unescape(rest.removeprefix("run.start_time@")))
    if rest == "graph.sleep":
        return GraphSleep()
    for action in ("load", "save"):
        if rest.startswith(f"conversation_{action}@"):
            return ConversationStep(action, unescape(rest.removeprefix(f"conversation_{action}@")))
    if rest.startswith("capability__"):
        capability, _, call = rest.removeprefix("capability__").partition("@")
        capability_id, dot, op = capability.rpartition(".")
        if not dot:
            return None
        return CapabilityStep(capability_id, op, unescape(call) if "@" in rest else None)
    return _parse_toolset(rest)


def _parse_model(rest: str) -> ModelStep | None:
    for op in MODEL_OPERATIONS:
        if rest == op:
            return ModelStep(op)
        if rest.startswith(f"{op}."):
            return ModelStep(op, rest.removeprefix(f"{op}."))
    return None


def _parse_toolset(rest: str) -> ToolsetStep | None:
    match = _TOOLSET.fullmatch(rest)
    if match is None:
        return None
    family = match.group("family")
    tool, call = match.group("tool"), match.group("call")
    return ToolsetStep(
        "mcp" if family == "mcp_server" else family.removesuffix("_toolset"),
        match.group("toolset"),
        _TOOLSET_OPERATIONS[match.group("op")],
        None if tool is None else unescape(tool),
        None if call is None else unescape(call),
    )
