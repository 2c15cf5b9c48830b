"""How records and entries are stored: messages as JSON text through Pydantic AI's message adapter.

pydantic-core cannot write or read lone surrogates as JSON (model or tool text may hold them): such a
value is stored as the envelope of `jsonb_param` (`{"json_escaped": "<text>"}`), read back exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic
from pydantic_ai.conversation_store import ConversationEntry, ConversationRecord
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import RunUsage
from pydantic_core import PydanticSerializationError

from .._checkpoint import ENVELOPE_TEXT_PREFIXES, from_jsonb, jsonb_param

_USAGE: pydantic.TypeAdapter[RunUsage] = pydantic.TypeAdapter(RunUsage)
_DEFERRED: pydantic.TypeAdapter[DeferredToolRequests] = pydantic.TypeAdapter(DeferredToolRequests)


@dataclass(frozen=True)
class EntryRow:
    """A row of the entries table, read by name (`psycopg.rows.class_row`)."""

    entry_id: str
    parent_id: str | None
    kind: Any
    message: str


@dataclass(frozen=True)
class HistoryRow(EntryRow):
    """An entry of a parent chain and its distance from the head (1 for the head)."""

    depth: int


@dataclass(frozen=True)
class RecordRow:
    """A row of `RECORD_COLUMNS`, read by name."""

    conversation_id: str
    head_id: str | None
    revision: str
    scope: str | None
    usage: str
    deferred_tool_requests: str | None
    forked_from: str | None
    forked_at: str | None
    branches: list[str] | None
    updated_at: datetime
    format_version: int


def message_text(message: ModelMessage) -> str:
    """One message as JSON text, exactly as `ModelMessagesTypeAdapter` writes it inside a list."""
    try:
        return ModelMessagesTypeAdapter.dump_json([message]).decode()[1:-1]
    except PydanticSerializationError:
        return jsonb_param(ModelMessagesTypeAdapter.dump_python([message], mode="json")[0])


def messages_from_texts(texts: Sequence[str]) -> list[ModelMessage]:
    """The messages stored as `texts`, validated in one call (one per envelope)."""
    if not texts:
        return []
    if not any(text.startswith(ENVELOPE_TEXT_PREFIXES) for text in texts):
        return ModelMessagesTypeAdapter.validate_json("[" + ",".join(texts) + "]")
    messages: list[ModelMessage] = []
    for text in texts:
        if text.startswith(ENVELOPE_TEXT_PREFIXES):
            messages += ModelMessagesTypeAdapter.validate_python([from_jsonb(json.loads(text))])
        else:
            messages += ModelMessagesTypeAdapter.validate_json(f"[{text}]")
    return messages


def _deferred_text(deferred: DeferredToolRequests) -> str:
    try:
        return _DEFERRED.dump_json(deferred).decode()
    except PydanticSerializationError:
        return jsonb_param(_DEFERRED.dump_python(deferred, mode="json"))


def _deferred_from_text(text: str) -> DeferredToolRequests:
    if text.startswith(ENVELOPE_TEXT_PREFIXES):
        return _DEFERRED.validate_python(from_jsonb(json.loads(text)))
    return _DEFERRED.validate_json(text)


def entries_from_rows(rows: Sequence[EntryRow]) -> list[ConversationEntry]:
    """Entries from rows of the entries table, oldest first."""
    messages = messages_from_texts([str(row.message) for row in rows])
    return [
        ConversationEntry(id=str(row.entry_id), parent_id=row.parent_id, message=message, kind=row.kind)
        for row, message in zip(rows, messages, strict=True)
    ]


def record_params(record: ConversationRecord) -> dict[str, object]:
    """The column values of `record`."""
    deferred = record.deferred_tool_requests
    return {
        "conversation_id": record.conversation_id,
        "head_id": record.head_id,
        "revision": record.revision,
        "scope": record.scope,
        "usage": _USAGE.dump_json(record.usage).decode(),
        "deferred": _deferred_text(deferred) if deferred is not None else None,
        "forked_from": record.forked_from,
        "forked_at": record.forked_at,
        "branches": list(record.branches),
        "updated_at": record.updated_at,
        "format_version": record.format_version,
    }


def record_from_row(row: RecordRow) -> ConversationRecord:
    """A record from a row of `RECORD_COLUMNS`."""
    conversation_id, deferred, fmt = row.conversation_id, row.deferred_tool_requests, row.format_version
    if fmt != 1:
        raise ValueError(f"Conversation {conversation_id!r} is stored in format {fmt}, which this version cannot read.")
    return ConversationRecord(
        conversation_id=str(conversation_id),
        head_id=row.head_id,
        usage=_USAGE.validate_json(row.usage),
        deferred_tool_requests=_deferred_from_text(deferred) if deferred is not None else None,
        scope=row.scope,
        forked_from=row.forked_from,
        forked_at=row.forked_at,
        branches=list(row.branches or ()),
        revision=str(row.revision),
        updated_at=row.updated_at,
        format_version=1,
    )
