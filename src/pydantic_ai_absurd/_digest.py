"""What a step was asked: the digest a replay checks, the request text a divergence diffs, one-line summaries.

A model request is digested from its model and messages, a tool call from its tool and arguments
(`asked_for`); the checkpoint stores the digest, the summary and the request text beside the value
(`_checkpoint.Checkpoint`), and `check_digest` compares a replay's request with them. Model-request digests
come in two formats: `m2:` marked ones, and unmarked ones of earlier builds, computed again on a replay of
such a checkpoint.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeGuard, cast

from pydantic_ai.durable_exec import (
    DurableOperationId,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelRequest, ModelResponse
from pydantic_ai.tools import RunContext
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ._checkpoint import Checkpoint
from ._text import utf8, visible
from .errors import ReplayDivergenceError

__all__ = [
    "REQUEST_TEXT_LIMIT",
    "Asked",
    "DigestChain",
    "asked_for",
    "check_digest",
    "preview",
    "request_diff",
]

REQUEST_TEXT_LIMIT = 4000
"""Characters of a step's request text kept in its checkpoint (for the diff of a divergence)."""

_ASKED_PREVIEW = 160


@dataclass(frozen=True)
class Asked:
    """What a step was asked: a stable digest of the request and a short human summary of it.

    `legacy` computes the digest in the format of earlier builds, for checkpoints they recorded (called only
    on a replay of such a checkpoint).
    """

    digest: str
    summary: str
    legacy: Callable[[], str] | None = field(default=None, compare=False)
    request: str | None = None
    """What the digest covers, as text (`REQUEST_TEXT_LIMIT` characters at most)."""

    @classmethod
    def of(cls, request: object, summary: str) -> Asked:
        """Digest `request` (JSON-compatible data; object keys sorted, so dict order does not matter)."""
        text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        digest = hashlib.blake2b(utf8(text), digest_size=16).hexdigest()
        return cls(digest, _one_line(summary), request=_request_text(request))


# `json.dumps(request, sort_keys=True, ensure_ascii=False, indent=1, default=str)`, encoded piecewise: the C encoder
# does not indent, so the text is built in Python, and only what the clip keeps is worth building.
_INDENTED = json.JSONEncoder(sort_keys=True, ensure_ascii=False, indent=1, default=str)


def _request_text(request: object) -> str:
    pieces: list[str] = []
    size = 0
    for piece in _INDENTED.iterencode(request):
        pieces.append(piece)
        size += len(piece)
        if size > REQUEST_TEXT_LIMIT:
            break  # `_clip` cuts here whatever follows
    return _clip("".join(pieces))


def _clip(text: str) -> str:
    # Written visibly: `jsonb` cannot hold lone surrogates, and the text is shown to an operator.
    text = visible(
        text if len(text) <= REQUEST_TEXT_LIMIT else text[: REQUEST_TEXT_LIMIT - 1] + "…", keep_newlines=True
    )
    return text


# New messages larger than this are kept as their compact JSON (clipped) rather than parsed and indented again:
# the request text must stay cheap on every model request, whatever a tool returned.
_INDENT_LIMIT = 64 * 1024


def _model_request_text(model: str, added: bytes | None) -> str:
    if added is None:
        return _request_text({"model": model, "new_messages": []})
    if len(added) > _INDENT_LIMIT:
        head = added[: 4 * REQUEST_TEXT_LIMIT].decode("utf-8", "ignore")
        return _clip(f'{{\n "model": {json.dumps(model)},\n "new_messages": {head}')
    return _request_text({"model": model, "new_messages": json.loads(added.decode("utf-8", "surrogatepass"))})


def request_diff(recorded: str, requested: str, *, limit: int = 40) -> str:
    """A unified diff of two request texts (`recorded` then `now`), at most `limit` lines."""
    lines = list(
        difflib.unified_diff(recorded.splitlines(), requested.splitlines(), "recorded", "now", n=1, lineterm="")
    )
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return "\n".join(lines)


def _one_line(summary: str) -> str:
    text = visible(" ".join(summary.split()))
    return text if len(text) <= _ASKED_PREVIEW else text[: _ASKED_PREVIEW - 1] + "…"


def check_digest(state: object, asked: Asked | None, *, step: str) -> None:
    """Raise `ReplayDivergenceError` when the checkpoint was recorded for another request than `asked`.

    Checkpoints without a digest (older ones, kinds that record none) are not checked.
    """
    if asked is None:
        return
    checkpoint = Checkpoint.read(state)
    recorded = checkpoint.digest
    if recorded is None or recorded == asked.digest:
        return
    if asked.legacy is not None and not recorded.startswith(_MESSAGES_DIGEST_V2) and recorded == asked.legacy():
        return
    recorded_summary = checkpoint.asked if checkpoint.asked is not None else f"digest {recorded}"
    recorded_request = checkpoint.request
    diff = (
        request_diff(recorded_request, asked.request)
        if recorded_request is not None and asked.request is not None
        else None
    )
    raise ReplayDivergenceError(
        f"Replay diverged at step {step!r}: it was recorded for {recorded_summary}, but the code now asks "
        f"for {asked.summary}. The code changed since the task started, or concurrent agent runs in one "
        "task started in another order; see 'Replay diverged' in the troubleshooting docs.",
        step=step,
        recorded=recorded_summary,
        requested=asked.summary,
        diff=diff,
    )


# Message fields that differ between a first run and its replay (or a fork) without changing the request.
_UNSTABLE = {
    "timestamp": True,
    "request_timestamp": True,
    "duration": True,
    "run_id": True,
    "conversation_id": True,
    "parts": {"__all__": {"timestamp"}},
}
_MESSAGE_EXCLUDE: Any = {"__all__": _UNSTABLE}
# Model-request digests are marked with their format. Format 2 leaves out every field that holds its default, so a
# Pydantic AI release that adds a message field with a default does not change the digests of recorded requests.
_MESSAGES_DIGEST_V2 = "m2:"
# Format 1 (unmarked, written before Pydantic AI 2.78) hashed every field that 2.68 had, defaults included: the
# fields 2.78 added are left out to compute it again.
_V1_MESSAGE_EXCLUDE: Any = {"__all__": {**_UNSTABLE, "parts": {"__all__": {"timestamp", "ui_visibility"}}}}


@dataclass
class DigestChain:
    """The messages of a run's previous model request and the hash state after them.

    A run's requests grow by a response and a request each time, so each digest hashes only the messages
    added since the previous request: the cost per step stays flat however long the conversation gets.
    A replay meets the same requests in the same order, so it builds the same chain.
    """

    messages: list[ModelMessage] = field(default_factory=lambda: [])
    hasher: Any = None
    chunks: tuple[int, ...] = ()
    """Where each hashed run of messages starts (format 1 digests are computed again over the same runs)."""


def _messages_digest(
    messages: list[ModelMessage], chain: DigestChain | None
) -> tuple[Any, tuple[int, ...], bytes | None]:
    previous = chain.messages if chain is not None else []
    start: Any = chain.hasher if chain is not None else None
    extends = len(previous) <= len(messages) and all(old is new for old, new in zip(previous, messages, strict=False))
    if start is not None and chain is not None and extends:
        hasher = start.copy()
        chunks = chain.chunks
        added = messages[len(previous) :]
    else:
        hasher = hashlib.blake2b(digest_size=16)
        chunks = ()
        added = messages
    dumped = _messages_json(added, _MESSAGE_EXCLUDE, exclude_defaults=True) if added else None
    if dumped is not None:
        hasher.update(dumped)
        chunks = (*chunks, len(messages) - len(added))
    if chain is not None:
        chain.messages = list(messages)
        chain.hasher = hasher.copy()
        chain.chunks = chunks
    return hasher, chunks, dumped


def _v1_digest(messages: list[ModelMessage], chunks: tuple[int, ...], model: str) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for start, end in zip(chunks, (*chunks[1:], len(messages)), strict=True):
        hasher.update(_messages_json(messages[start:end], _V1_MESSAGE_EXCLUDE))
    hasher.update(b"\x00model:" + utf8(model))
    return hasher.hexdigest()


def _messages_json(messages: list[ModelMessage], exclude: Any, *, exclude_defaults: bool = False) -> bytes:
    try:
        return ModelMessagesTypeAdapter.dump_json(messages, exclude=exclude, exclude_defaults=exclude_defaults)
    except PydanticSerializationError:  # lone surrogates, which pydantic-core cannot write as JSON
        data = ModelMessagesTypeAdapter.dump_python(
            messages, mode="json", exclude=exclude, exclude_defaults=exclude_defaults
        )
        return utf8(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def preview(value: object, limit: int = 60) -> str:
    """A one-line preview of `value` (text as is, anything else as JSON), at most `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_text(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        for part in reversed(message.parts):
            content = getattr(part, "content", None)
            if content is not None:
                return f"{part.part_kind} {preview(content)}"
            tool_name = getattr(part, "tool_name", None)
            if isinstance(tool_name, str):
                return f"{part.part_kind} {tool_name}"
    return "no parts"


def asked_for(
    operation_id: DurableOperationId, cache_key: tuple[object, ...], chain: DigestChain | None = None
) -> Asked | None:
    """What a model request or tool call is asked, from the operation's cache key (searched by type).

    A model request is identified by its model and messages (without timestamps and run identifiers,
    which differ on every attempt and in a fork); a tool call or argument validation by the tool's name
    and arguments. Other operations carry no digest. `chain` (one per agent run) makes a model request's
    digest cost only the messages added since the run's previous request.
    """
    if isinstance(operation_id, ModelRequestId):
        messages = next((item for item in cache_key if _is_message_list(item)), None)
        if messages is None:
            return None
        model = operation_id.model_id or "default"
        hasher, chunks, added = _messages_digest(messages, chain)
        hasher.update(b"\x00model:" + utf8(model))
        summary = f"a request to model {model!r} with {len(messages)} message(s), the last {_last_text(messages)}"
        return Asked(
            _MESSAGES_DIGEST_V2 + hasher.hexdigest(),
            _one_line(summary),
            partial(_v1_digest, list(messages), chunks, model),
            request=_model_request_text(model, added),
        )
    if isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId):
        tool_name: str | None = None
        args: object = None
        for item in cast(tuple[Any, ...], cache_key):
            if isinstance(item, RunContext) and tool_name is None:
                tool_name = cast(RunContext[Any], item).tool_name
            elif isinstance(item, dict) and args is None:
                args = cast(dict[str, Any], item)
        jsonable = to_jsonable_python(args, fallback=str)
        return Asked.of(
            {"tool": tool_name, "args": jsonable}, f"tool {tool_name!r} with arguments {preview(jsonable, 100)}"
        )
    return None


def _is_message_list(item: object) -> TypeGuard[list[ModelMessage]]:
    if not isinstance(item, list):
        return False
    entries = cast(list[object], item)
    return bool(entries) and all(isinstance(entry, ModelRequest | ModelResponse) for entry in entries)
