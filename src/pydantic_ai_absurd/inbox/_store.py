"""The inbox's SQL on `pydantic_ai_absurd.inbox_requests` (Absurd's own tables only through `_absurd`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import psycopg
from psycopg import AsyncConnection, sql

from .. import _absurd
from .._checkpoint import from_jsonb, jsonb_param
from .._db import fetch_all_as, fetch_one_as
from ..errors import RequestNotPendingError
from ..schema._tables import OWN_SCHEMA
from ._records import COLUMNS, InsertedRow, LockedRow, RequestRow

__all__ = ["insert_request", "locked_request", "mark_notified", "pending_rows", "purge_rows", "save_decisions"]

TABLE = sql.SQL("{}.inbox_requests").format(sql.Identifier(OWN_SCHEMA))
_OPEN = sql.SQL("r.answered_at is null and (r.expires_at is null or r.expires_at > {})").format(_absurd.CURRENT_TIME)


async def insert_request(
    conn: AsyncConnection[Any],
    *,
    token: str,
    queue_name: str,
    task_id: str,
    task_name: str,
    agent_name: str | None,
    wait_name: str,
    requests: dict[str, Any],
    scope: str | None,
    timeout: timedelta | None,
) -> InsertedRow:
    """Record a request once per token (a retried step finds the first row); returns it and whether to notify."""
    seconds = None if timeout is None else timeout.total_seconds()
    await conn.execute(
        sql.SQL(
            "insert into {} (token, queue_name, task_id, task_name, agent_name, wait_name, requests, scope,"
            " asked_at, expires_at) select %s, %s, %s, %s, %s, %s, %s::jsonb, %s, n.now,"
            " n.now + make_interval(secs => %s) from (select {} as now) n"
            " on conflict (token) do nothing"
        ).format(TABLE, _absurd.CURRENT_TIME),
        (token, queue_name, task_id, task_name, agent_name, wait_name, jsonb_param(requests), scope, seconds),
    )
    query = sql.SQL("select {}, notified_at is null as to_notify from {} r where token = %s")
    row = await fetch_one_as(conn, InsertedRow, query.format(sql.SQL(COLUMNS), TABLE), (token,))
    assert row is not None
    return row


async def mark_notified(conn: AsyncConnection[Any], token: str) -> None:
    """Remember that `notify` ran for this request, so a retried step does not notify again."""
    await conn.execute(sql.SQL("update {} set notified_at = now() where token = %s").format(TABLE), (token,))


async def _open_queues(conn: AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute(sql.SQL("select distinct queue_name from {} r where {}").format(TABLE, _OPEN))
    names = [str(row[0]) for row in await cur.fetchall()]
    return await _absurd.existing_queues(conn, names) if names else []


async def pending_rows(
    conn: AsyncConnection[Any],
    *,
    token: str | None = None,
    task_id: str | None = None,
    scope: str | None = None,
    limit: int | None = None,
    queue_name: str | None = None,
) -> list[RequestRow]:
    """Open requests whose task still runs or waits, oldest first (a union over the queues they belong to)."""
    queues = [q for q in await _open_queues(conn) if queue_name is None or q == queue_name]
    if not queues:
        return []
    filters = [_OPEN, sql.SQL("r.queue_name = %s")]
    params: list[Any] = []
    if token is not None:
        filters.append(sql.SQL("r.token = %s"))
    if task_id is not None:
        filters.append(sql.SQL("r.task_id = %s::uuid"))
    if scope is not None:
        filters.append(sql.SQL("r.scope = %s"))
    per_queue: list[sql.Composable] = []
    for queue in queues:
        per_queue.append(
            sql.SQL(
                "(select {columns} from {table} r join {tasks} t on t.task_id = r.task_id"
                " where {filters} and t.state <> all(%s)"
                " and not exists (select 1 from {events} e where e.event_name = r.token and e.payload is not null)"
                " order by r.asked_at, r.token {limit})"
            ).format(
                columns=sql.SQL(COLUMNS),
                table=TABLE,
                tasks=_absurd.task_states(queue),
                events=_absurd.emitted_events(queue),
                filters=sql.SQL(" and ").join(filters),
                limit=sql.SQL("limit %s") if limit is not None else sql.SQL(""),
            )
        )
        params.append(queue)
        params.extend(value for value in (token, task_id, scope) if value is not None)
        params.append(list(_absurd.TERMINAL_TASK_STATES))
        if limit is not None:
            params.append(limit)
    query = sql.SQL("select * from ({}) q order by asked_at, token").format(sql.SQL(" union all ").join(per_queue))
    if limit is not None:
        query = sql.SQL("{} limit %s").format(query)
        params.append(limit)
    return await fetch_all_as(conn, RequestRow, query, params)


async def locked_request(
    conn: AsyncConnection[Any], token: str, scope: str | None, queue_name: str | None = None
) -> tuple[RequestRow, dict[str, Any]]:
    """Lock the open request `token` for an answer (inside the caller's transaction); refuse it unless pending.

    Returns the row and its stored decisions. Concurrent answers queue up on the row lock, so the second
    sees the first one's answer.
    """
    query = sql.SQL(
        "select {}, r.answered_at is not null as answered, r.expires_at is not null and r.expires_at <= {} as expired"
        " from {} r where r.token = %s for update"
    ).format(sql.SQL(COLUMNS), _absurd.CURRENT_TIME, TABLE)
    row = await fetch_one_as(conn, LockedRow, query, (token,))
    if row is None or (scope is not None and row.scope != scope) or (queue_name not in (None, row.queue_name)):
        raise RequestNotPendingError(f"No pending inbox request has token {token!r}.", token=token)
    if row.answered:
        raise RequestNotPendingError(f"Inbox request {token!r} was already answered.", token=token)
    if row.expired:
        raise RequestNotPendingError(f"Inbox request {token!r} expired: its wait timed out.", token=token)
    state, emitted = await _task_state(conn, row.queue_name, row.task_id, token)
    if state is None or state in _absurd.TERMINAL_TASK_STATES:
        raise RequestNotPendingError(
            f"Inbox request {token!r} is not pending: its task {row.task_id} is {state or 'gone'}.", token=token
        )
    if emitted:  # resolved without the inbox (`resolve_event_token`, `absurd.emit_event`)
        raise RequestNotPendingError(f"Inbox request {token!r} was already answered.", token=token)
    return row, cast(dict[str, Any], from_jsonb(row.decisions) or {})


async def _task_state(conn: AsyncConnection[Any], queue_name: str, task_id: str, token: str) -> tuple[str | None, bool]:
    """The task's state (None when it or its queue is gone) and whether the token's event was emitted."""
    query = sql.SQL(
        "select t.state, exists (select 1 from {events} e where e.event_name = %s and e.payload is not null)"
        " from {tasks} t where t.task_id = %s::uuid"
    ).format(events=_absurd.emitted_events(queue_name), tasks=_absurd.task_states(queue_name))
    try:
        async with conn.transaction():  # a savepoint: a dropped queue must not abort the answer's transaction
            cur = await conn.execute(query, (token, task_id))
            found = await cur.fetchone()
    except psycopg.errors.UndefinedTable:
        return None, False
    return (None, False) if found is None else (str(found[0]), bool(found[1]))


async def save_decisions(
    conn: AsyncConnection[Any],
    row: RequestRow,
    decisions: dict[str, Any],
    *,
    complete: bool,
    emit: Callable[[], Awaitable[None]],
) -> None:
    """Store the decisions; when they decide every call, mark the request answered and emit its event (same transaction)."""
    await conn.execute(
        sql.SQL(
            "update {} set decisions = %s::jsonb, answered_at = case when %s then now() end where token = %s"
        ).format(TABLE),
        (jsonb_param(decisions), complete, row.token),
    )
    if complete:
        await emit()


async def purge_rows(conn: AsyncConnection[Any], older_than: timedelta) -> int:
    """Delete requests asked more than `older_than` ago that are no longer pending; returns how many."""
    cutoff = sql.SQL("r.asked_at < {} - make_interval(secs => %s)").format(_absurd.CURRENT_TIME)
    seconds = older_than.total_seconds()
    cur = await conn.execute(
        sql.SQL("delete from {} r where {} and not ({}) returning r.token").format(TABLE, cutoff, _OPEN),
        (seconds,),
    )
    deleted = len(await cur.fetchall())
    # Open rows whose task ended or is gone are not pending either.
    cur = await conn.execute(sql.SQL("select distinct queue_name from {} r where {}").format(TABLE, cutoff), (seconds,))
    queues = [str(found[0]) for found in await cur.fetchall()]
    existing = set(await _absurd.existing_queues(conn, queues)) if queues else set[str]()
    for queue in queues:
        if queue in existing:
            query = sql.SQL(
                "delete from {} r where {} and r.queue_name = %s and not exists"
                " (select 1 from {} t where t.task_id = r.task_id and t.state <> all(%s))"
            ).format(TABLE, cutoff, _absurd.task_states(queue))
            params: tuple[Any, ...] = (seconds, queue, list(_absurd.TERMINAL_TASK_STATES))
        else:
            query = sql.SQL("delete from {} r where {} and r.queue_name = %s").format(TABLE, cutoff)
            params = (seconds, queue)
        cur = await conn.execute(query, params)
        deleted += cur.rowcount
    return deleted
