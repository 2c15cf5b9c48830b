"""The inbox: human input for durable runs, recorded in Postgres and answered from any process.

`Inbox.ask` is the handler of Pydantic AI's `HandleDeferredToolCalls` capability: it records the pending calls with the
run's resume token in `pydantic_ai_absurd.inbox_requests` and returns `None`, so the run waits (the task
sleeps on an Absurd event, holding no worker). `pending()` lists what waits now; `approve` / `deny` /
`answer` check the answer against the stored request and, in one transaction, mark it answered and emit
the event that resumes the run.

A request is pending while it has no answer, its wait has not timed out, and its task is neither
completed, failed nor cancelled (read from Absurd's `absurd.t_<queue>` of the queue stored with each
request, so one inbox serves every queue of the database). Rows stay after the answer, as a record of
who answered what, until `Inbox.purge()` deletes them.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, get_current_context
from pydantic_ai.exceptions import UserError
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolApproved, ToolDenied

from .. import _absurd
from .._checkpoint import Checkpoint
from .._db import borrow_connection, open_connection
from .._dsn import redact_dsn
from .._waits import TOKEN_PREFIX, current_wait
from ..errors import InvalidAnswerError, RequestNotPendingError, SchemaNotInstalledError, one_line
from . import _answers, _store
from ._records import REQUESTS_ADAPTER, PendingRequest, open_requests, parse_requests, record_from_row

__all__ = ["Inbox", "InvalidAnswerError", "PendingRequest", "RequestNotPendingError"]

ScopeFunction = Callable[[RunContext[Any]], "str | int | None"]
NotifyFunction = Callable[[PendingRequest], "Awaitable[None] | None"]


class Inbox:
    """Pending human input of durable runs, in Postgres: ask from a run, list and answer from anywhere.

    Args:
        absurd: The Absurd client whose database holds the inbox. The inbox uses connections of its own to it:
            `pending`, `get`, `purge` and the answers reuse a few kept idle per event loop (closed with the loop;
            one whose server session ended is replaced), `ask` opens one for its call.
        scope: Called with the run context when a run asks; its result (a tenant or user ID as a str or int,
            or None) is stored with the request, as a str. `pending(scope=...)` and answers given `scope=` see only that scope.
        notify: Called once per request with the `PendingRequest`, inside the step that records it (to post
            to Slack, send an email). It may be async. If it raises, the step fails and is retried by Absurd,
            which calls it again; once it returned, a retry does not call it again.
        dsn: Connect here instead of the client's database.
    """

    def __init__(
        self,
        absurd: AsyncAbsurd,
        *,
        scope: ScopeFunction | None = None,
        notify: NotifyFunction | None = None,
        dsn: str | None = None,
    ) -> None:
        self.absurd = absurd
        self._scope = scope
        self._notify = notify
        self._dsn = dsn

    @asynccontextmanager
    async def _connect(self, *, own: bool = False) -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
        """A connection to the inbox's database, reused between calls in this event loop.

        With `own`, one for this call only: an ask in a worker leaves no idle connection behind.
        """
        dsn = self._dsn or _absurd.client_conninfo(self.absurd)
        if dsn is None:
            raise UserError("The Absurd client of this Inbox has no database; pass `Inbox(absurd, dsn=...)`.")
        try:
            async with open_connection(dsn) if own else borrow_connection(dsn) as conn:
                yield conn
        except (
            psycopg.errors.UndefinedTable,
            psycopg.errors.InvalidSchemaName,
            psycopg.errors.UndefinedFunction,
        ) as exc:
            raise SchemaNotInstalledError(
                f"The inbox table is missing in {redact_dsn(dsn)} ({one_line(exc)}); "
                "run `pydantic-ai-absurd init` (or `setup()`) to install the schema."
            ) from exc

    async def ask(self, ctx: RunContext[Any], requests: DeferredToolRequests, token: str) -> None:
        """Record the pending calls under `token` and return None, so the durable run waits for an answer.

        Pass it as `HandleDeferredToolCalls(inbox.ask)`. It runs inside the step of the wait and is idempotent:
        a retried step finds the row of the first attempt.
        """
        task_ctx = get_current_context()
        wait = current_wait()
        if not isinstance(task_ctx, AsyncTaskContext) or wait is None or not token.startswith(TOKEN_PREFIX):
            raise UserError(
                "Inbox.ask waits in a durable run only: run the agent (an AbsurdAgent) inside an Absurd task."
            )
        queue_name, task_name = _absurd.task_identity(task_ctx)
        scope = None if self._scope is None else self._scope(ctx)
        if isinstance(scope, int) and not isinstance(scope, bool):
            scope = str(scope)  # a numeric tenant ID; `pending(scope=...)` takes its str()
        if scope is not None and not isinstance(scope, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise UserError(f"The scope function of the Inbox returned {type(scope).__name__}, not a str or None.")
        agent_name = None if ctx.agent is None else ctx.agent.name
        async with self._connect(own=True) as conn:
            row = await _store.insert_request(
                conn,
                token=token,
                queue_name=queue_name,
                task_id=task_ctx.task_id,
                task_name=task_name,
                agent_name=agent_name,
                wait_name=wait.name,
                requests=cast(dict[str, Any], REQUESTS_ADAPTER.dump_python(requests, mode="json")),
                scope=scope,
                timeout=wait.timeout,
            )
            if row.to_notify and self._notify is not None:
                outcome = self._notify(record_from_row(row))
                if inspect.isawaitable(outcome):
                    await outcome
                await _store.mark_notified(conn, token)

    async def pending(
        self,
        *,
        task_id: str | None = None,
        scope: str | None = None,
        limit: int | None = None,
        queue_name: str | None = None,
    ) -> list[PendingRequest]:
        """The requests waiting for an answer now, oldest first; optionally of one task, scope or queue only."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        async with self._connect() as conn:
            rows = await _store.pending_rows(conn, task_id=task_id, scope=scope, limit=limit, queue_name=queue_name)
        return [record_from_row(row) for row in rows]

    async def get(self, token: str, *, scope: str | None = None) -> PendingRequest | None:
        """The pending request with this token, or None when nothing waits on it (or it is of another scope)."""
        async with self._connect() as conn:
            rows = await _store.pending_rows(conn, token=token, scope=scope)
        return record_from_row(rows[0]) if rows else None

    async def approve(
        self,
        token: str,
        *,
        tool_call_ids: Sequence[str] | None = None,
        answered_by: str | None = None,
        scope: str | None = None,
        queue_name: str | None = None,
    ) -> PendingRequest | None:
        """Approve pending calls of the request (`None`: every pending approval); approved calls run once.

        Returns None when the request is fully answered and the run resumes, else the request with what
        still waits (calls not listed stay pending). Raises `RequestNotPendingError` / `InvalidAnswerError`.
        """
        return await self._decide(
            token,
            scope,
            queue_name,
            lambda remaining: _answers.approval_results(
                token, remaining, decision=ToolApproved(), tool_call_ids=tool_call_ids, answered_by=answered_by
            ),
        )

    async def deny(
        self,
        token: str,
        *,
        reason: str,
        tool_call_ids: Sequence[str] | None = None,
        answered_by: str | None = None,
        scope: str | None = None,
        queue_name: str | None = None,
    ) -> PendingRequest | None:
        """Deny pending calls of the request (`None`: every pending approval); the model is told `reason`."""
        return await self._decide(
            token,
            scope,
            queue_name,
            lambda remaining: _answers.approval_results(
                token, remaining, decision=ToolDenied(reason), tool_call_ids=tool_call_ids, answered_by=answered_by
            ),
        )

    async def answer(
        self,
        token: str,
        results: DeferredToolResults,
        *,
        scope: str | None = None,
        queue_name: str | None = None,
    ) -> PendingRequest | None:
        """Answer with `DeferredToolResults` (approvals, external results, metadata, answered_by) for pending calls."""
        return await self._decide(token, scope, queue_name, lambda remaining: results)

    async def _decide(
        self,
        token: str,
        scope: str | None,
        queue_name: str | None,
        build: Callable[[DeferredToolRequests], DeferredToolResults],
    ) -> PendingRequest | None:
        async with self._connect() as conn, conn.transaction():
            row, decisions = await _store.locked_request(conn, token, scope, queue_name)
            requests = parse_requests(row.requests)
            remaining = open_requests(requests, decisions)
            answer = _answers.results_json(token, remaining, build(remaining))
            merged = _answers.merge(decisions, answer)
            complete = _answers.is_complete(requests, merged)
            queue_name = row.queue_name

            async def emit() -> None:
                envelope = Checkpoint.of(merged).stored()
                await _absurd.emit_event_sql(conn, queue_name, token, envelope)

            await _store.save_decisions(conn, row, merged, complete=complete, emit=emit)
        if complete:
            return None
        return record_from_row(dataclasses.replace(row, decisions=merged))

    async def purge(self, *, older_than: timedelta) -> int:
        """Delete requests asked more than `older_than` ago that no longer wait (answered, expired, task ended).

        Returns how many rows went. Pending requests are never deleted. Run it periodically (a cron task)
        to bound the table; until then answered rows are a record of who answered what.
        """
        async with self._connect() as conn:
            return await _store.purge_rows(conn, older_than)
