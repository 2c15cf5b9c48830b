"""The kinds of steps a persisted step name can name, as `StepName` (`_step_names.py`) formats and parses them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._step_names import StepName

__all__ = [
    "MODEL_OPERATIONS",
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
    "ToolsetOperation",
    "ToolsetStep",
    "WaitPart",
]

ModelOperation = Literal["request", "request_stream", "count_tokens", "compact_messages", "cancel_suspended_response"]
ToolsetOperation = Literal["call_tool", "validate_args", "get_tools", "get_instructions"]
WaitPart = Literal["ask", "event", "timed_out"]
ChildPart = Literal["result", "event"]

MODEL_OPERATIONS: tuple[ModelOperation, ...] = (
    "request_stream",  # before `request`, its prefix
    "request",
    "count_tokens",
    "compact_messages",
    "cancel_suspended_response",
)


@dataclass(frozen=True)
class ModelStep:
    """A model request (plain or streamed), a token count, a compaction or a cancellation of a suspended response."""

    operation: ModelOperation = "request"
    model_id: str | None = None
    """The model's ID when it is not the agent's default model."""


@dataclass(frozen=True)
class ToolsetStep:
    """A tool call, an argument validation, a tool listing or MCP instructions of one toolset."""

    family: str
    """The toolset kind: `function`, `dynamic`, `mcp`."""
    toolset_id: str
    operation: ToolsetOperation
    tool_name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True)
class CapabilityStep:
    """An operation of a capability (`@durable_operation`), with the tool call it was called from."""

    capability_id: str
    operation: str
    tool_call_id: str | None = None


@dataclass(frozen=True)
class EventHandlerStep:
    """One call of the durable event stream handler: the event's kind, and its tool call for a tool event."""

    event_kind: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True)
class RunStartTime:
    """The recorded start time of the run `run_id` (`<task id>:<agent name>:<n>`)."""

    run_id: str

    @property
    def run_number(self) -> int | None:
        """The `<n>` of the run ID: which run of the agent in the task this was."""
        tail = self.run_id.rpartition(":")[2]
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class GraphSleep:
    """The agent graph's sleep (a provider's background job polled, a model retry's back-off)."""


@dataclass(frozen=True)
class ExternalEventStep:
    """A durable wait for an external event: its ask step, the event, or the recorded timeout."""

    name: str
    part: WaitPart = "ask"


@dataclass(frozen=True)
class ConversationStep:
    """The load or the save of a stored conversation."""

    action: Literal["load", "save"]
    conversation_id: str


@dataclass(frozen=True)
class ProviderWait:
    """When the model step `model_step` (its checkpoint name, `#N` included) was first throttled by its provider."""

    model_step: StepName


@dataclass(frozen=True)
class ChildTaskStep:
    """A `run_as_child` call (its call site, child task, n-th call of that site): its end, or its end event."""

    call_site: StepName | None
    task_name: str
    occurrence: int = 1
    part: ChildPart = "result"


@dataclass(frozen=True)
class OtherStep:
    """A name of no known kind: a step of the user's own (no agent), or an operation this version does not know."""

    text: str


Operation = (
    ModelStep
    | ToolsetStep
    | CapabilityStep
    | EventHandlerStep
    | RunStartTime
    | GraphSleep
    | ExternalEventStep
    | ConversationStep
    | ProviderWait
    | ChildTaskStep
    | OtherStep
)
