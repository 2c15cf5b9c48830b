"""What the event log holds: Pydantic AI's stream events, our status events, and `TaskEvent` (one log entry)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Discriminator, JsonValue, TypeAdapter
from pydantic_ai.messages import AgentStreamEvent
from pydantic_core import PydanticSerializationError

from .._checkpoint import from_jsonb, jsonb_param
from .._text import unstorable_json

__all__ = [
    "STATUS_KINDS",
    "AnyEvent",
    "ResumedEvent",
    "RunFinishedEvent",
    "RunStartedEvent",
    "StatusEvent",
    "StepInterruptedEvent",
    "TaskEvent",
    "WaitingForInputEvent",
    "decode_event",
    "encode_event",
    "encode_event_json",
]


@dataclass(frozen=True)
class RunStartedEvent:
    """An attempt of the task started running its first durable agent run (attempt 1, then each retry)."""

    attempt: int
    run_id: str | None = None
    """Absurd's run (one per attempt) that started."""
    event_kind: Literal["run_started"] = "run_started"


@dataclass(frozen=True)
class WaitingForInputEvent:
    """The run suspended, waiting for a human (an approval or `HandleDeferredToolCalls`): resolve `token` to resume it."""

    token: str
    request: dict[str, JsonValue] | None = None
    """The pending inbox request for `token`, when the inbox layer recorded one."""
    event_kind: Literal["waiting_for_input"] = "waiting_for_input"


@dataclass(frozen=True)
class ResumedEvent:
    """A suspended run (waiting for input, or sleeping) was claimed again and continues."""

    attempt: int
    event_kind: Literal["resumed"] = "resumed"


@dataclass(frozen=True)
class StepInterruptedEvent:
    """The step `step` published events but never committed (its worker died, or it failed): discard them.

    Those events are the ones with `TaskEvent.step == step` and `seq <= last_seq` (the last of them was
    written in attempt `attempt`). The step runs again and publishes its events anew after this marker.
    """

    step: str
    attempt: int
    last_seq: int
    event_kind: Literal["step_interrupted"] = "step_interrupted"


@dataclass(frozen=True)
class RunFinishedEvent:
    """The task finished for good; always the last event of a log."""

    status: Literal["completed", "failed", "cancelled"]
    event_kind: Literal["run_finished"] = "run_finished"


StatusEvent: TypeAlias = Annotated[
    RunStartedEvent | WaitingForInputEvent | ResumedEvent | StepInterruptedEvent | RunFinishedEvent,
    Discriminator("event_kind"),
]
"""The events this package adds to a log, next to Pydantic AI's own."""

AnyEvent: TypeAlias = AgentStreamEvent | StatusEvent
"""Any event of a log: a Pydantic AI `AgentStreamEvent` or a status event."""

STATUS_KINDS: frozenset[str] = frozenset(
    {"run_started", "waiting_for_input", "resumed", "step_interrupted", "run_finished"}
)

_agent_events: TypeAdapter[AgentStreamEvent] = TypeAdapter(AgentStreamEvent)
_status_events: TypeAdapter[StatusEvent] = TypeAdapter(StatusEvent)


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's event log: its sequence number (1, 2, ... per task) and the event.

    `seq` is what a reader resumes from (`stream_events(..., after=seq)`) and the SSE `id`.
    """

    seq: int
    event: AnyEvent
    attempt: int | None = None
    """The task attempt that wrote the event (status events written by Absurd's functions too)."""
    step: str | None = None
    """The checkpoint name of the step that published it; `None` for status events."""
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """The event's `event_kind` (`part_delta`, `function_tool_call`, ..., `run_finished`)."""
        return str(self.event.event_kind)

    @property
    def is_final(self) -> bool:
        """Whether this is the log's last event (`RunFinishedEvent`)."""
        return isinstance(self.event, RunFinishedEvent)


def encode_event(event: AnyEvent) -> tuple[str, Any]:
    """`(kind, JSON-compatible value)` of an event, as stored in the log."""
    if isinstance(
        event, RunStartedEvent | WaitingForInputEvent | ResumedEvent | StepInterruptedEvent | RunFinishedEvent
    ):
        return event.event_kind, _status_events.dump_python(event, mode="json")
    return str(event.event_kind), _agent_events.dump_python(event, mode="json")


def encode_event_json(event: AnyEvent) -> tuple[str, str]:
    """`(kind, JSON text for a jsonb column)` of an event (the fast path of the writer).

    An event holding text `jsonb` refuses (NUL, lone surrogates: model and tool text may) is stored in
    the envelope of `jsonb_param`, which `decode_event` unwraps.
    """
    if isinstance(
        event, RunStartedEvent | WaitingForInputEvent | ResumedEvent | StepInterruptedEvent | RunFinishedEvent
    ):
        return event.event_kind, _status_events.dump_json(event).decode()
    try:
        text = _agent_events.dump_json(event).decode()
    except PydanticSerializationError:  # lone surrogates, which pydantic-core cannot write as JSON
        return str(event.event_kind), jsonb_param(_agent_events.dump_python(event, mode="json"))
    if unstorable_json(text):
        return str(event.event_kind), jsonb_param(json.loads(text))
    return str(event.event_kind), text


def decode_event(kind: str, value: Any) -> AnyEvent:
    """The event stored as `value` with `kind`."""
    if kind in STATUS_KINDS:
        return _status_events.validate_python(value)
    return _agent_events.validate_python(from_jsonb(value))
