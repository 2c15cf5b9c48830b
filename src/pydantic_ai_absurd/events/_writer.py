"""Writing a task's event log, from inside the steps that produce the events.

The durable event stream handler of `AbsurdDurability` sees the model's events live inside the model
step and each tool event inside a step of its own, and never on replay. `publish_events` wraps it:
every event it sees is appended to the log on the task's own connection, tagged with the step's
checkpoint name and the attempt, so an event is in the log only for a step that ran now. Text and
tool-argument deltas are batched (one write per `DELTA_FLUSH_INTERVAL`), every other event is written
at once together with the deltas before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic

import psycopg
from absurd_sdk import AsyncTaskContext
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent
from pydantic_ai.tools import AgentDepsT, RunContext

from .._absurd import claimed_task_of, task_connection, task_identity
from .._execution import current_step, current_task_context, execution_state, in_step
from .._extensions import DurableRun
from ..errors import EventLogError
from ._model import AnyEvent, RunStartedEvent, encode_event_json

__all__ = ["DELTA_FLUSH_INTERVAL", "StepPublisher", "announce_execution", "publish_events"]

logger = logging.getLogger("pydantic_ai_absurd.events")

DELTA_FLUSH_INTERVAL = 0.2
"""Seconds: buffered deltas are written at most this long after the first of them arrived."""

MAX_BATCH = 500
"""Events per write at most."""

_triggers_installed: set[tuple[str, str]] = set()


def _missing_schema(error: psycopg.Error) -> EventLogError:
    return EventLogError(
        "The event log of pydantic-ai-absurd is not installed in this database (publish_events=True needs it): "
        f"run `pydantic-ai-absurd init` or `setup()` once ({' '.join(str(error).split())})."
    )


async def _install_triggers(conn: psycopg.AsyncConnection[Any], queue_name: str) -> None:
    key = (conn.info.dsn, queue_name)
    if key in _triggers_installed:
        return
    try:
        await conn.execute("select pydantic_ai_absurd.install_event_triggers(%s)", (queue_name,))
    except psycopg.errors.UndefinedFunction as error:
        raise _missing_schema(error) from error
    _triggers_installed.add(key)


class StepPublisher:
    """Appends the events of one step body to its task's log, batching deltas."""

    def __init__(self, task_ctx: AsyncTaskContext, step: str) -> None:
        task = claimed_task_of(task_ctx)
        self._conn = task_connection(task_ctx)
        self._queue_name, _ = task_identity(task_ctx)
        self._task_id = str(task_ctx.task_id)
        self._run_id = str(task["run_id"])
        self._attempt = int(task["attempt"])
        self._step = step
        self._buffer: list[tuple[str, str]] = []
        self._first_buffered = 0.0
        self._writing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._stopped = False
        self.writes = 0

    @classmethod
    def for_current_step(cls) -> StepPublisher | None:
        """A publisher for the step body the current code runs in, or `None` outside a durable step."""
        step = current_step()
        task_ctx = current_task_context()
        if step is None or task_ctx is None:
            return None
        return cls(task_ctx, step)

    async def add(self, event: AnyEvent) -> None:
        """Buffer `event`; write the buffer now unless it is a delta that may wait a little."""
        if self._stopped:
            return
        if not self._buffer:
            self._first_buffered = time.monotonic()
        self._buffer.append(encode_event_json(event))
        if (
            not isinstance(event, PartDeltaEvent)
            or len(self._buffer) >= MAX_BATCH
            or time.monotonic() - self._first_buffered >= DELTA_FLUSH_INTERVAL
        ):
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(max(self._first_buffered + DELTA_FLUSH_INTERVAL - time.monotonic(), 0))
        self._timer = None
        await self.flush()

    async def flush(self) -> None:
        """Start writing what is buffered, after the writes before it; the stream goes on meanwhile.

        Raises the error of an earlier write, if one failed.
        """
        previous = self._writing
        if previous is not None and previous.done():
            self._writing = None
            previous.result()
            previous = None
        if not self._buffer or self._stopped:
            self._buffer.clear()
            return
        batch, self._buffer = self._buffer, []
        self._writing = asyncio.ensure_future(self._write_after(previous, batch))

    async def _write_after(self, previous: asyncio.Task[None] | None, batch: list[tuple[str, str]]) -> None:
        if previous is not None:
            await previous
        if not self._stopped:
            await self._write(batch)

    async def close(self) -> None:
        """Write the rest and wait for every write (also when the step body failed: a marker follows later)."""
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            timer.cancel()
        await self.flush()
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        try:
            cur = await self._conn.execute(
                # arrays in binary: the text format would escape every quote of every JSON event in Python
                "select pydantic_ai_absurd.append_events(%s, %s, %s, %s, %s, %b::text[], %b::text[]::jsonb[])",
                (
                    self._queue_name,
                    self._task_id,
                    self._run_id,
                    self._attempt,
                    self._step,
                    [kind for kind, _ in batch],
                    [value for _, value in batch],
                ),
            )
        except psycopg.errors.UndefinedFunction as error:
            raise _missing_schema(error) from error
        row = await cur.fetchone()
        self.writes += 1
        if row is None or row[0] is None:
            # This run is no longer the task's running run: it lost its claim, and its step cannot commit.
            logger.warning(
                "Task %s: run %s lost its claim; its events are no longer published", self._task_id, self._run_id
            )
            self._stopped = True


_ANNOUNCED = "events.announced"


async def announce_execution() -> None:
    """Start the log of this execution of the task: mark interrupted steps, write `run_started` once per attempt.

    Called by the publishing handler's `DurableRunHook` when a durable run starts, outside any step. It runs once per
    execution (concurrent agent runs of one execution wait for the same call), before any of its steps
    publishes, so every step with events but no checkpoint at that point belongs to an execution that
    died or failed inside it.
    """
    task_ctx = current_task_context()
    if task_ctx is None or in_step():
        return
    once = execution_state(task_ctx).once
    announced = once.get(_ANNOUNCED)
    if announced is None:
        announced = once[_ANNOUNCED] = asyncio.ensure_future(_start_execution(task_ctx))
    await asyncio.shield(announced)


async def _start_execution(task_ctx: AsyncTaskContext) -> None:
    task = claimed_task_of(task_ctx)
    conn = task_connection(task_ctx)
    queue_name, _ = task_identity(task_ctx)
    await _install_triggers(conn, queue_name)
    _, value = encode_event_json(RunStartedEvent(attempt=int(task["attempt"]), run_id=str(task["run_id"])))
    try:
        await conn.execute(
            "select pydantic_ai_absurd.start_execution(%s, %s, %s, %s, %s::jsonb)",
            (queue_name, str(task_ctx.task_id), str(task["run_id"]), int(task["attempt"]), value),
        )
    except psycopg.errors.UndefinedFunction as error:
        raise _missing_schema(error) from error


class _PublishingHandler(Generic[AgentDepsT]):
    """A durable event stream handler that publishes every event it sees, then hands it to another handler."""

    def __init__(self, handler: EventStreamHandler[AgentDepsT] | None) -> None:
        self._handler = handler

    @asynccontextmanager
    async def durable_run(self, run: DurableRun) -> AsyncGenerator[None]:
        """Start this execution's log before the run's first step (a `DurableRunHook` of the capability)."""
        await announce_execution()
        yield

    async def __call__(self, ctx: RunContext[AgentDepsT], stream: AsyncIterable[AgentStreamEvent]) -> None:
        handler = self._handler
        publisher = StepPublisher.for_current_step()
        if publisher is None:
            await _deliver(handler, ctx, stream)
            return

        async def published() -> AsyncIterator[AgentStreamEvent]:
            async for event in stream:
                await publisher.add(event)
                yield event

        failed = False
        try:
            await _deliver(handler, ctx, published())
        except BaseException:
            failed = True
            raise
        finally:
            try:
                await publisher.close()
            except Exception:
                if not failed:
                    raise
                logger.warning("Could not write the last events of a failed step", exc_info=True)


def publish_events(handler: EventStreamHandler[AgentDepsT] | None = None) -> EventStreamHandler[AgentDepsT]:
    """A durable event stream handler that appends every event of a durable run to the task's event log.

    `AbsurdAgent(..., publish_events=True)` installs it for you. With the capability, pass it yourself:
    `AbsurdDurability(event_stream_handler=publish_events())`, or `publish_events(my_handler)` to also
    hand every event to `my_handler`. Events are written inside the step that produced them (replayed
    steps write nothing), with status events of the run; read them with `stream_events()`.
    """
    return _PublishingHandler(handler)


async def _deliver(
    handler: EventStreamHandler[AgentDepsT] | None, ctx: RunContext[AgentDepsT], stream: AsyncIterable[AgentStreamEvent]
) -> None:
    if handler is not None:
        await handler(ctx, stream)
        return
    async for _ in stream:
        pass
