"""`PendingRequest`: one durable wait for human input, as stored in the inbox and shown to whoever answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from pydantic import TypeAdapter
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests

from .._checkpoint import ENVELOPE_TEXT_PREFIXES, from_jsonb

__all__ = [
    "InsertedRow",
    "LockedRow",
    "PendingRequest",
    "RequestRow",
    "decided_ids",
    "open_requests",
    "parse_requests",
    "record_from_row",
]

REQUESTS_ADAPTER: TypeAdapter[DeferredToolRequests] = TypeAdapter(DeferredToolRequests)

COLUMNS = (
    "r.token, r.queue_name, r.task_id::text as task_id, r.task_name, r.agent_name, r.wait_name, r.requests::text as requests, r.scope,"
    " r.asked_at, r.expires_at, nullif(r.decisions, '{}'::jsonb) as decisions"
)
"""The columns of `pydantic_ai_absurd.inbox_requests` (as `r`) that `RequestRow` holds."""


@dataclass(frozen=True)
class RequestRow:
    """A row of `COLUMNS`, read by name (`psycopg.rows.class_row`)."""

    token: str
    queue_name: str
    task_id: str
    task_name: str
    agent_name: str | None
    wait_name: str
    requests: str
    scope: str | None
    asked_at: datetime
    expires_at: datetime | None
    decisions: Any


@dataclass(frozen=True)
class InsertedRow(RequestRow):
    """A request just recorded, and whether `notify` has yet to run for it."""

    to_notify: bool


@dataclass(frozen=True)
class LockedRow(RequestRow):
    """A request locked for an answer, and whether it can still be answered."""

    answered: bool
    expired: bool


@dataclass(frozen=True, kw_only=True)
class PendingRequest:
    """A durable run waiting for human input: the calls to approve or answer, and who is asking.

    `approvals` and `calls` list only the calls still waiting for a decision (an answer may decide some of
    them first with `tool_call_ids=`). The token is a bearer capability: whoever holds it can answer.
    """

    token: str
    """The resume token of the wait; pass it to `Inbox.approve` / `deny` / `answer`."""
    task_id: str
    """The Absurd task whose run waits."""
    queue_name: str
    """The Absurd queue of that task."""
    task_name: str
    """The name the task was registered under."""
    agent_name: str | None
    """The name of the agent that asked, when it has one."""
    name: str
    """The name of the wait (`HandleDeferredToolCalls(name=...)`, or the name given to `wait_for_external_event`)."""
    approvals: list[ToolCallPart] = field(default_factory=list[ToolCallPart])
    """Tool calls waiting for approval (`requires_approval=True`, `ApprovalRequired`)."""
    calls: list[ToolCallPart] = field(default_factory=list[ToolCallPart])
    """Tool calls waiting for an external result (`CallDeferred`, `ExternalToolset` tools)."""
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    """Metadata of the deferred calls, keyed by `tool_call_id` (what the tool attached to `ApprovalRequired` / `CallDeferred`)."""
    scope: str | None = None
    """The scope recorded by `Inbox(scope=...)` (a tenant or user ID), or None."""
    asked_at: datetime
    """When the run asked (database time)."""
    expires_at: datetime | None = None
    """When the wait times out (`HandleDeferredToolCalls(timeout=...)`), or None to wait without a limit."""

    @property
    def tool_call_ids(self) -> list[str]:
        """IDs of every call still waiting, approvals first."""
        return [call.tool_call_id for call in (*self.approvals, *self.calls)]


def decided_ids(decisions: dict[str, Any]) -> set[str]:
    """Tool call IDs that already have a decision in a stored (partial) answer."""
    return set(cast(dict[str, Any], decisions.get("approvals") or {})) | set(
        cast(dict[str, Any], decisions.get("calls") or {})
    )


def open_requests(requests: DeferredToolRequests, decisions: dict[str, Any]) -> DeferredToolRequests:
    """The part of `requests` still without a decision."""
    done = decided_ids(decisions)
    return DeferredToolRequests(
        approvals=[call for call in requests.approvals if call.tool_call_id not in done],
        calls=[call for call in requests.calls if call.tool_call_id not in done],
        metadata={key: value for key, value in requests.metadata.items() if key not in done},
    )


def parse_requests(value: object) -> DeferredToolRequests:
    """The stored `requests` column (JSON text, as `COLUMNS` selects it) as `DeferredToolRequests`.

    Requests holding text `jsonb` refuses are stored in the envelope of `jsonb_param` (`{"json": ...}`).
    """
    if isinstance(value, str):
        if not value.startswith(ENVELOPE_TEXT_PREFIXES):
            return REQUESTS_ADAPTER.validate_json(value)
        value = json.loads(value)
    return REQUESTS_ADAPTER.validate_python(from_jsonb(value))


def record_from_row(row: RequestRow) -> PendingRequest:
    """Build a `PendingRequest` from a row of `COLUMNS`."""
    remaining = parse_requests(row.requests)
    decisions = from_jsonb(row.decisions)
    if decisions:
        remaining = open_requests(remaining, cast(dict[str, Any], decisions))
    return PendingRequest(
        token=str(row.token),
        task_id=str(row.task_id),
        queue_name=str(row.queue_name),
        task_name=str(row.task_name),
        agent_name=None if row.agent_name is None else str(row.agent_name),
        name=str(row.wait_name),
        approvals=remaining.approvals,
        calls=remaining.calls,
        metadata=remaining.metadata,
        scope=None if row.scope is None else str(row.scope),
        asked_at=row.asked_at,
        expires_at=row.expires_at,
    )
