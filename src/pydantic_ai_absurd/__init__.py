"""Durable execution for Pydantic AI agents on Postgres alone, through the Absurd workflow engine.

The names here are what an application needs first; specialised ones live in their module:
`pydantic_ai_absurd.worker` (worker settings, retry policy), `pydantic_ai_absurd.client` (spawning and
results), `pydantic_ai_absurd.schema` (schema and queues), `pydantic_ai_absurd.embedded` (a local
Postgres for development) and `pydantic_ai_absurd.testing` (pytest plugin and helpers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._extensions import LAYERS as _LAYERS

if TYPE_CHECKING:
    from pydantic_ai.agent import EventStreamHandler
    from pydantic_ai.conversation_store import ConversationStore

    from ._agent import AbsurdAgent, ChildRunResult
    from ._durability import TOOL_METADATA_KEY, AbsurdDurability
    from ._extensions import DurableRunHook, RunExtension
    from ._waits import fail_event_token, resolve_event_token
    from .conversations import PostgresConversationStore
    from .errors import (
        ChildTaskCancelledError,
        ChildTaskFailedError,
        ConversationConflictError,
        DurableTransactionError,
        InvalidAnswerError,
        NonRetryableError,
        PydanticAIAbsurdError,
        ReplayDivergenceError,
        RequestNotPendingError,
        UnserializableResultError,
    )
    from .events import TaskEvent, event_stream_response, publish_events, stream_events
    from .inbox import Inbox, PendingRequest
    from .inspection import TaskTimeline, inspect_task
    from .schema import setup
    from .telemetry import otel_hooks
    from .transactions import durable_transaction
    from .verify import fork_task, verify_replay
    from .worker import WorkerConfig, run_worker

# Loaded on first use, so `pydantic-ai-absurd init --help` does not import all of Pydantic AI.
_EXPORTS: dict[str, str] = {
    "AbsurdAgent": "._agent",
    "ChildRunResult": "._agent",
    "ChildTaskCancelledError": ".errors",
    "ChildTaskFailedError": ".errors",
    "PostgresConversationStore": ".conversations",
    "ConversationConflictError": ".errors",
    "DurableTransactionError": ".errors",
    "durable_transaction": ".transactions",
    "AbsurdDurability": "._durability",
    "TOOL_METADATA_KEY": "._durability",
    "NonRetryableError": ".errors",
    "PydanticAIAbsurdError": ".errors",
    "ReplayDivergenceError": ".errors",
    "UnserializableResultError": ".errors",
    "fail_event_token": "._waits",
    "Inbox": ".inbox",
    "PendingRequest": ".inbox",
    "InvalidAnswerError": ".errors",
    "RequestNotPendingError": ".errors",
    "resolve_event_token": "._waits",
    "setup": ".schema",
    "TaskEvent": ".events",
    "event_stream_response": ".events",
    "publish_events": ".events",
    "stream_events": ".events",
    "WorkerConfig": ".worker",
    "run_worker": ".worker",
    "fork_task": ".verify",
    "verify_replay": ".verify",
    "TaskTimeline": ".inspection",
    "inspect_task": ".inspection",
    "otel_hooks": ".telemetry",
}

__all__ = [
    "fork_task",
    "verify_replay",
    "durable_transaction",
    "TaskEvent",
    "event_stream_response",
    "publish_events",
    "stream_events",
    "TOOL_METADATA_KEY",
    "AbsurdAgent",
    "AbsurdDurability",
    "ChildRunResult",
    "ChildTaskCancelledError",
    "ChildTaskFailedError",
    "ConversationConflictError",
    "DurableTransactionError",
    "PostgresConversationStore",
    "Inbox",
    "InvalidAnswerError",
    "PendingRequest",
    "RequestNotPendingError",
    "NonRetryableError",
    "PydanticAIAbsurdError",
    "ReplayDivergenceError",
    "UnserializableResultError",
    "WorkerConfig",
    "fail_event_token",
    "resolve_event_token",
    "run_worker",
    "setup",
    "TaskTimeline",
    "inspect_task",
    "otel_hooks",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# -- The layers the core serves its public arguments with (see `_extensions`), each imported on first use.


def _telemetry() -> DurableRunHook:
    from .telemetry import RunTelemetry

    return RunTelemetry()


def _conversations(store: ConversationStore, limit: int | None) -> RunExtension:
    from .conversations._turn import StoredConversations

    return StoredConversations(store, limit)


def _publishing(handler: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    from .events import publish_events

    return publish_events(handler)


class _Children:
    """The `children` layer, imported on first use (`AbsurdAgent.register_task` / `run_as_child`)."""

    def register_task(self, agent: AbsurdAgent[Any, Any], name: str | None, queue: str | None) -> str:
        from .children import register_child_task

        return register_child_task(agent, name, queue)

    async def run_as_child(self, agent: AbsurdAgent[Any, Any], user_prompt: Any, **options: Any) -> ChildRunResult[Any]:
        from .children import run_child

        return await run_child(agent, user_prompt, **options)


_LAYERS.run_hooks.append(_telemetry)
_LAYERS.children = _Children()
_LAYERS.conversations = _conversations
_LAYERS.publishing = _publishing
