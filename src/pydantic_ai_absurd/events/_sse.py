"""Serving a task's event log as Server-Sent Events in Pydantic AI's UI protocols (Vercel AI, AG-UI).

The protocol encoding is Pydantic AI's own (`pydantic_ai.ui`'s `VercelAIEventStream` / `AGUIEventStream`
`transform_stream` + `encode_event`). What this module adds is the SSE `id` of every event, in the
same SSE event as its data: `seq.index`, the log event that produced the chunk and the chunk's place among
that event's chunks. A browser's `EventSource` reconnects with `Last-Event-ID` and continues exactly after
that chunk, wherever the connection dropped. A reconnect replays the log from its start through a
fresh protocol stream and sends only what comes after `Last-Event-ID`, so the protocol's own state (open
text parts, tool calls, message ids) continues where the first connection left off. Status events (run
started, waiting for input, step interrupted, ...) are sent as the protocol's custom data events: a
`data-absurd-status` part (Vercel AI) or a `CUSTOM` event named `absurd.status` (AG-UI).
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from absurd_sdk import AsyncAbsurd
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from .._absurd import client_conninfo, client_queue_name
from .._db import borrow_connection
from ..errors import EventLogError
from ._model import STATUS_KINDS, TaskEvent, encode_event
from ._reader import parse_after, stream_events, task_uuid

if TYPE_CHECKING:
    from starlette.responses import Response

__all__ = ["STATUS_EVENT_NAME", "UIProtocol", "event_stream_response", "sse_events"]

UIProtocol = Literal["vercel-ai", "ag-ui"]

STATUS_EVENT_NAME = "absurd-status"
"""Vercel AI: status events are `data-absurd-status` parts; AG-UI: `CUSTOM` events named `absurd.status`."""


class _StableMessageIds:
    """Message ids derived from the task id, the same on every connection: a reconnect continues the same messages."""

    message_id: str
    _namespace: uuid.UUID
    _ids: int

    def new_message_id(self) -> str:
        self._ids += 1
        self.message_id = str(uuid.uuid5(self._namespace, f"message-{self._ids}"))
        return self.message_id


def _ui_stream(protocol: str, task_id: str, sdk_version: Literal[5, 6, 7]) -> Any:
    namespace = uuid.UUID(task_id)
    try:
        if protocol == "vercel-ai":
            from pydantic_ai.ui.vercel_ai import VercelAIEventStream

            @dataclass
            class _VercelStream(_StableMessageIds, VercelAIEventStream[Any, Any]):
                _namespace: uuid.UUID = namespace
                _ids: int = 0

            return _VercelStream(sdk_version=sdk_version, server_message_id=task_id, message_id=task_id)
        if protocol == "ag-ui":
            from pydantic_ai.ui.ag_ui import AGUIEventStream

            @dataclass
            class _AGUIStream(_StableMessageIds, AGUIEventStream[Any, Any]):
                _namespace: uuid.UUID = namespace
                _ids: int = 0

            return _AGUIStream(thread_id=task_id, run_id=task_id, message_id=task_id)
    except ImportError as error:
        raise EventLogError(
            f"event_stream_response(protocol={protocol!r}) needs the `web` extra: "
            f"pip install 'pydantic-ai-absurd[web]' ({error})."
        ) from error
    raise EventLogError(f"Unknown protocol {protocol!r}: use 'vercel-ai' or 'ag-ui'.")


def _status_chunk(protocol: str, value: Any) -> Any:
    if protocol == "vercel-ai":
        from pydantic_ai.ui.vercel_ai.response_types import DataChunk

        return DataChunk(type=f"data-{STATUS_EVENT_NAME}", data=value)
    from ag_ui.core import CustomEvent

    return CustomEvent(name="absurd.status", value=value)


_WHOLE = sys.maxsize


def _position(last_event_id: str | int | None) -> tuple[int, int]:
    """Where a stream resumes: send only the chunks after `(seq, index)` (a plain `seq`: after all of its chunks)."""
    text = "" if last_event_id is None else str(last_event_id).strip()
    seq_text, dot, index_text = text.partition(".")
    seq = parse_after(seq_text)
    if not dot:
        return (seq, _WHOLE) if seq else (0, -1)
    if not index_text.isdigit():
        raise EventLogError(f"{last_event_id!r} is not an SSE event id of this stream (seq.index, two integers >= 0).")
    return seq, int(index_text)


async def _transform(
    ui: Any, protocol: str, items: AsyncGenerator[TaskEvent], out: asyncio.Queue[tuple[str, int, Any]]
) -> None:
    """Put the protocol's chunks on `out`, each group of them after a `("group", seq)` marker of its log event."""
    first: TaskEvent | None = None
    clock_ms = 0

    def clock(item: TaskEvent) -> None:
        nonlocal clock_ms
        if item.created_at is not None:
            clock_ms = int(item.created_at.timestamp() * 1000)

    async def source() -> AsyncIterator[Any]:
        if first is None:
            return
        async for item in _chain(first, items):
            clock(item)
            await out.put(("group", item.seq, None))
            if item.kind in STATUS_KINDS:
                await out.put(("chunk", 0, _status_chunk(protocol, {"seq": item.seq, **encode_event(item.event)[1]})))
            else:
                yield item.event

    try:
        first = await anext(items, None)  # read first: the opening chunks are stamped with its time
        if first is not None:
            clock(first)
        async for chunk in ui.transform_stream(source()):
            if protocol == "ag-ui":
                # Timestamps from the log, not the clock, so a reconnect sends the very same events.
                chunk.timestamp = clock_ms
            await out.put(("chunk", 0, chunk))
    except Exception as error:
        await out.put(("error", 0, error))
        return
    finally:
        await items.aclose()
    await out.put(("end", 0, None))


async def _chain(first: TaskEvent, rest: AsyncIterator[TaskEvent]) -> AsyncIterator[TaskEvent]:
    yield first
    async for item in rest:
        yield item


async def sse_events(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    protocol: UIProtocol = "vercel-ai",
    last_event_id: str | int | None = None,
    queue_name: str | None = None,
    sdk_version: Literal[5, 6, 7] = 5,
    listen_dsn: str | None = None,
) -> AsyncGenerator[str]:
    """The SSE text of `task_id`'s event log in `protocol`, after `last_event_id`, live until the run finished.

    Every SSE event carries its own id, `seq.index`: the `seq` of the log event that produced the chunk and
    the chunk's index among that event's chunks (the protocol's opening chunks are `0.index`). `listen_dsn`
    as in `stream_events` (a direct connection to `LISTEN` on when the client's goes through PgBouncer).
    """
    task = task_uuid(task_id)
    after = _position(last_event_id)
    ui = _ui_stream(protocol, task, sdk_version)
    out: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue(maxsize=256)
    items = cast(AsyncGenerator[TaskEvent], stream_events(absurd, task, queue_name=queue_name, listen_dsn=listen_dsn))
    producer = asyncio.ensure_future(_transform(ui, protocol, items, out))
    group, index = 0, -1
    try:
        while True:
            kind, seq, payload = await out.get()
            if kind == "group":
                group, index = seq, -1
            elif kind == "chunk":
                index += 1
                if (group, index) > after:
                    yield f"id: {group}.{index}\n{_encoded(ui, payload)}"
            elif kind == "error":
                raise payload
            else:
                return
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


def _encoded(ui: Any, chunk: Any) -> str:
    """`ui.encode_event(chunk)`; a lone surrogate, which UTF-8 (and so SSE) cannot carry, is sent as U+FFFD."""
    try:
        return ui.encode_event(chunk)
    except PydanticSerializationError:
        if not isinstance(chunk, BaseModel):
            raise
        return ui.encode_event(type(chunk).model_validate(_replaced(chunk.model_dump(by_alias=True))))


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replaced(key): _replaced(item) for key, item in cast(dict[Any, Any], value).items()}
    if isinstance(value, list | tuple):
        return [_replaced(item) for item in cast(list[Any], value)]
    return value


_SURROGATES = re.compile(r"[\ud800-\udfff]")


async def _finished_by(absurd: AsyncAbsurd, queue_name: str, task_id: str, after: int) -> bool:
    conninfo = client_conninfo(absurd)
    if after <= 0 or conninfo is None:
        return False
    async with borrow_connection(conninfo) as conn:  # one check per request: reuse the loop's idle connections
        cur = await conn.execute(
            "select exists (select 1 from pydantic_ai_absurd.events where queue_name = %s and task_id = %s"
            " and kind = 'run_finished' and seq <= %s)",
            (queue_name, task_id, after),
        )
        row = await cur.fetchone()
        return bool(row and row[0])


async def _prepend(first: str, rest: AsyncGenerator[str]) -> AsyncIterator[str]:
    yield first
    async for text in rest:
        yield text


def event_stream_response(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    protocol: UIProtocol = "vercel-ai",
    last_event_id: str | int | None = None,
    queue_name: str | None = None,
    sdk_version: Literal[5, 6, 7] = 5,
    listen_dsn: str | None = None,
) -> Response:
    """A Starlette response streaming `task_id`'s run as Server-Sent Events in a Pydantic AI UI protocol.

    Return it from a Starlette or FastAPI handler. Pass the request's `Last-Event-ID` header as
    `last_event_id`: every SSE event carries its own id (`seq.index`: the log event's sequence number and
    the chunk's place among its chunks), so a reconnect continues exactly after the last event the client
    received, neither repeating nor skipping a chunk. A plain `seq` continues after all of that log
    event's chunks. A client that has already received the finished run gets `204 No
    Content`, which tells an `EventSource` to stop reconnecting.

    Args:
        absurd: A client of the task's database (and queue, unless `queue_name` is given).
        task_id: The task, as `spawn` returned it.
        protocol: `"vercel-ai"` (Vercel AI data stream, `VercelAIEventStream`) or `"ag-ui"` (`AGUIEventStream`).
        last_event_id: The `Last-Event-ID` request header, if any.
        queue_name: The task's queue when it is not the client's.
        sdk_version: Vercel AI SDK version to target (Vercel AI protocol only).
        listen_dsn: A direct connection string to `LISTEN` on when the client's connection goes through
            PgBouncer in transaction mode (see `stream_events`).

    Raises:
        EventLogError: `last_event_id` is not an id of this stream, or the `web` extra is missing.
    """
    task = task_uuid(task_id)
    after = _position(last_event_id)
    queue = queue_name or client_queue_name(absurd)
    ui = _ui_stream(protocol, task, sdk_version)
    headers = {**dict(ui.response_headers or {}), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    body = sse_events(
        absurd,
        task,
        protocol=protocol,
        last_event_id=last_event_id,
        queue_name=queue,
        sdk_version=sdk_version,
        listen_dsn=listen_dsn,
    )
    return _streaming_response(
        body, lambda: _finished_by(absurd, queue, task, after[0]), media_type=ui.content_type, headers=headers
    )


def _streaming_response(
    body: AsyncGenerator[str], finished: Callable[[], Awaitable[bool]], *, media_type: str, headers: dict[str, str]
) -> Response:
    """A `StreamingResponse` of `body` that answers `204 No Content` when `finished()` and nothing is left to send."""
    try:
        from starlette.responses import Response, StreamingResponse
    except ImportError as error:
        raise EventLogError(
            f"event_stream_response needs the `web` extra: pip install 'pydantic-ai-absurd[web]' ({error})."
        ) from error

    class _EventStreamResponse(StreamingResponse):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if await finished():
                # The run finished: the rest of the stream is known at once; nothing left means 204.
                first = await anext(body, None)
                if first is None:
                    await Response(status_code=204)(scope, receive, send)
                    return
                self.body_iterator = _prepend(first, body)
            await super().__call__(scope, receive, send)

    return _EventStreamResponse(body, media_type=media_type, headers=headers)
