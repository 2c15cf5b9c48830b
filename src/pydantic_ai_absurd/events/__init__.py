"""Live run events through Postgres: a per-task event log, a reader, and SSE in Pydantic AI's UI protocols.

`AbsurdAgent(agent, absurd, publish_events=True)` (or `AbsurdDurability(event_stream_handler=publish_events())`) appends every event of a durable run (Pydantic AI's
`AgentStreamEvent`s plus status events) to the task's log in table `pydantic_ai_absurd.events`, inside the
step that produced it, and announces it with `NOTIFY`. `stream_events()` reads a log from any process;
`event_stream_response()` serves it as Server-Sent Events (Vercel AI data stream or AG-UI).
"""

from ._model import (
    AnyEvent,
    ResumedEvent,
    RunFinishedEvent,
    RunStartedEvent,
    StatusEvent,
    StepInterruptedEvent,
    TaskEvent,
    WaitingForInputEvent,
)
from ._reader import FALLBACK_POLL_INTERVAL, POOLED_POLL_INTERVAL, channel_name, read_events, stream_events
from ._sse import event_stream_response, sse_events
from ._writer import DELTA_FLUSH_INTERVAL, publish_events

__all__ = [
    "DELTA_FLUSH_INTERVAL",
    "FALLBACK_POLL_INTERVAL",
    "POOLED_POLL_INTERVAL",
    "AnyEvent",
    "ResumedEvent",
    "RunFinishedEvent",
    "RunStartedEvent",
    "StatusEvent",
    "StepInterruptedEvent",
    "TaskEvent",
    "WaitingForInputEvent",
    "channel_name",
    "event_stream_response",
    "publish_events",
    "read_events",
    "sse_events",
    "stream_events",
]
