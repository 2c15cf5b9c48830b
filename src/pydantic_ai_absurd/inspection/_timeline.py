"""`inspect_task` and `list_tasks`: a task's story from Absurd's tables and our checkpoints."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import AsyncConnection

from .. import _absurd
from .._db import connect_async, queue_not_found
from .._worker_records import read_lost_executions, registered_names
from ..client import TaskNotFoundError
from ..errors import SchemaNotInstalledError
from ._lost import lost_executions
from ._records import (
    AgentRunRecord,
    AttemptEnd,
    AttemptRecord,
    StepKind,
    StepRecord,
    TaskSummary,
    TaskTimeline,
    TimelineTotals,
    TokenUsage,
)
from ._steps import ParsedName, StepValue, decode_value, parse_step_name
from ._waits import WaitRow, wait_durations

__all__ = ["FORKED_FROM_HEADER", "inspect_task", "list_tasks"]

FORKED_FROM_HEADER = "pydantic_ai_absurd.forked_from"
"""Task header in which a fork records the task it was forked from (`verify.fork_task`); shown as `forked_from`."""

Source = AsyncAbsurd | AsyncConnection[Any] | str


@asynccontextmanager
async def _connection(source: Source) -> AsyncGenerator[AsyncConnection[Any]]:
    if isinstance(source, AsyncConnection):
        yield source
        return
    conninfo = source if isinstance(source, str) else _absurd.client_conninfo(source)
    if conninfo is None:
        raise SchemaNotInstalledError("The Absurd client has neither a connection nor a connection string.")
    conn = await connect_async(conninfo, autocommit=True)
    async with conn:
        yield conn


def _default_queue(source: Source) -> str | None:
    return _absurd.client_queue_name(source) if isinstance(source, AsyncAbsurd) else None


def _map(err: psycopg.Error, queue: str) -> Exception | None:
    if isinstance(err, psycopg.errors.UndefinedTable):
        return queue_not_found(queue, "check the name (`pydantic-ai-absurd tasks` lists every queue's tasks).")
    if isinstance(err, psycopg.errors.UndefinedFunction | psycopg.errors.InvalidSchemaName):
        return SchemaNotInstalledError(
            "The database has no Absurd schema: run `pydantic-ai-absurd init` (or `await setup(dsn)`) first."
        )
    if isinstance(err, psycopg.errors.InvalidTextRepresentation):
        return TaskNotFoundError("The task id is not a task id (a UUID).")
    return None


async def _queue_names(conn: AsyncConnection[Any]) -> list[str]:
    try:
        return await _absurd.list_queue_names(conn)
    except psycopg.Error as err:
        mapped = _map(err, "")
        if mapped is not None:
            raise mapped from err
        raise


async def inspect_task(absurd: Source, task_id: str | UUID, *, queue: str | None = None) -> TaskTimeline:
    """What task `task_id` did: its attempts, every step grouped by agent run, and the totals.

    Args:
        absurd: The `AsyncAbsurd` client (its database and queue are used), a psycopg `AsyncConnection`
            or a connection string.
        task_id: The task's id, as `spawn` returned it (a string or a `UUID`).
        queue: The task's queue. Defaults to the client's; with a connection or a string and no
            queue, every queue is searched.

    Raises:
        TaskNotFoundError: No such task (wrong id or queue, or removed by Absurd's cleanup).
    """
    task_id = str(task_id)
    async with _connection(absurd) as conn:
        target = queue or _default_queue(absurd)
        queues = [target] if target is not None else await _queue_names(conn)
        for name in queues:
            try:
                task = await _absurd.read_task(conn, name, task_id)
                if task is None:
                    continue
                runs = await _absurd.read_runs(conn, name, task_id)
                last_run = task["last_attempt_run"] or (runs[-1]["run_id"] if runs else None)
                rows = [] if last_run is None else await _absurd.read_checkpoints(conn, name, task_id, last_run)
                now = await _absurd.database_now(conn)
                lost = await read_lost_executions(conn, name, task_id)
                known = await registered_names(conn, name)
            except psycopg.Error as err:
                mapped = _map(err, name)
                if mapped is not None:
                    raise mapped from err
                raise
            timeline = build_timeline(name, task, runs, rows, now, lost)
            return replace(timeline, known_to_workers=None if known is None else timeline.task_name in known)
    where = f"queue {target!r}" if target is not None else "any queue"
    raise TaskNotFoundError(
        f"No task {task_id} in {where}: check the id and the queue, or it was removed by Absurd's cleanup."
    )


def _attempt_end(run: dict[str, Any], *, last_step: StepKind | None = None) -> AttemptEnd:
    """How `run` ended; a suspended run whose last step records a provider's retry-after waits for the provider."""
    state = str(run["state"])
    if state == "failed":
        reason = run["failure_reason"]
        if isinstance(reason, dict) and cast(dict[str, Any], reason).get("name") == "$ClaimTimeout":
            return "lease_expired"
        return "failed"
    if state == "sleeping":
        if run["wake_event"]:
            return "waiting"
        return "provider_wait" if last_step == "provider_wait" else "sleeping"
    return cast(AttemptEnd, state) if state in {"completed", "cancelled", "running", "pending"} else "pending"


def _forked_from(task: dict[str, Any]) -> str | None:
    # A fork records `{"task_id": ..., "at_step": N, "last_step": ...}` in this header (`verify.fork_task`).
    headers: object = task.get("headers")
    if not isinstance(headers, dict):
        return None
    value = cast(dict[str, Any], headers).get(FORKED_FROM_HEADER)
    if isinstance(value, dict):
        value = cast(dict[str, Any], value).get("task_id")
    return str(value) if isinstance(value, str) and value else None


def build_timeline(
    queue: str,
    task: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[tuple[str, Any, str | None, Any]],
    now: datetime | None = None,
    lost: list[dict[str, Any]] | None = None,
) -> TaskTimeline:
    """Assemble the timeline from the task's row, its runs and its checkpoints in write order.

    `now` is the database's time: a wait still unanswered counts until then. `lost` holds the task's
    recorded takeovers (`pydantic_ai_absurd.lost_executions` rows).
    """
    attempt_of = {str(run["run_id"]): int(run["attempt"]) for run in runs}
    # How far each attempt got: a completed one went past everything; otherwise its last write.
    reached: dict[int, datetime | None] = {}
    written: dict[int, int] = {}
    for _, _, owner, updated_at in rows:
        attempt = attempt_of.get(owner or "")
        if attempt is not None:
            written[attempt] = written.get(attempt, 0) + 1
            previous = reached.get(attempt)
            reached[attempt] = updated_at if previous is None or updated_at > previous else previous
    completed = {int(run["attempt"]) for run in runs if run["state"] == "completed"}
    # A run claimed again after a suspension, a wait or a hand-back (a dead worker's run taken over
    # without using an attempt) replays its own earlier steps: `started_at` is its latest claim.
    reclaimed = {
        int(run["attempt"]): run["started_at"]
        for run in runs
        if run["started_at"] is not None
        and (
            int(run["attempt"]) in completed
            or ((last := reached.get(int(run["attempt"]))) is not None and last > run["started_at"])
        )
    }
    ordered_attempts = sorted(set(attempt_of.values()))

    def replayers(executed_by: int | None, committed_at: datetime) -> tuple[int, ...]:
        if executed_by is None:
            return ()
        later = [
            attempt
            for attempt in ordered_attempts
            if attempt > executed_by
            and (attempt in completed or ((last := reached.get(attempt)) is not None and last > committed_at))
        ]
        claimed_again = reclaimed.get(executed_by)
        if claimed_again is not None and claimed_again > committed_at:
            later.insert(0, executed_by)
        return tuple(later)

    tool_calls: dict[tuple[str | None, int | None, str], tuple[str, Any]] = {}
    steps: list[StepRecord] = []
    spent = saved = TokenUsage()
    parsed_rows = [parse_step_name(name) for name, _, _, _ in rows]
    decoded_rows = [
        decode_value(state, parsed.kind) for parsed, (_, state, _, _) in zip(parsed_rows, rows, strict=True)
    ]
    waited = _waits(task, runs, rows, parsed_rows, decoded_rows, now)
    waiting = sum(waited.values())
    for index, (name, _, owner, updated_at) in enumerate(rows, start=1):
        parsed, decoded = parsed_rows[index - 1], decoded_rows[index - 1]
        executed_by = attempt_of.get(owner or "")
        replayed_by = replayers(executed_by, updated_at)
        scope = (parsed.agent, parsed.run_ordinal)
        for call_id, tool, args in decoded.tool_calls:
            tool_calls[(*scope, call_id)] = (tool, args)
        tool_name, tool_args = parsed.tool_name, None
        if parsed.tool_call_id is not None:
            called = tool_calls.get((*scope, parsed.tool_call_id))
            if called is not None:
                tool_name = tool_name or called[0]
                tool_args = called[1]
        if decoded.usage is not None:
            spent += decoded.usage
            for _ in replayed_by:
                saved += decoded.usage
        if parsed.kind == "sleep" and isinstance(decoded.value, str):
            waiting += _sleep_seconds(decoded.value, updated_at)
        is_tool = parsed.kind in {"tool_call", "mcp_call", "validate_args"}
        steps.append(
            StepRecord(
                index=index,
                name=name,
                kind=parsed.kind,
                agent=parsed.agent,
                run_ordinal=parsed.run_ordinal,
                model_name=decoded.model_name,
                usage=decoded.usage,
                preview=None if is_tool else decoded.preview,
                tool_name=tool_name,
                tool_call_id=parsed.tool_call_id,
                tool_args=tool_args,
                result_preview=decoded.preview if is_tool else None,
                error=decoded.error,
                executed_by=executed_by,
                replayed_by=replayed_by,
                committed_at=updated_at,
                waited_seconds=waited.get(index - 1),
            )
        )
    attempts = tuple(
        AttemptRecord(
            attempt=int(run["attempt"]),
            run_id=str(run["run_id"]),
            state=str(run["state"]),
            ended=_attempt_end(run, last_step=steps[-1].kind if steps else None),
            claimed_by=run["claimed_by"],
            created_at=run["created_at"],
            started_at=run["started_at"],
            finished_at=run["completed_at"] or run["failed_at"],
            failure=run["failure_reason"] if run["state"] == "failed" else None,
            wake_event=run["wake_event"],
            available_at=run["available_at"],
            steps_executed=written.get(int(run["attempt"]), 0),
        )
        for run in runs
    )
    return TaskTimeline(
        task_id=str(task["task_id"]),
        queue=queue,
        task_name=str(task["task_name"]),
        state=str(task["state"]),
        params=task["params"],
        headers=cast(dict[str, Any], task["headers"] or {}),
        result=task["result"],
        failure=task["failure_reason"],
        enqueued_at=task["enqueue_at"],
        started_at=task["first_started_at"],
        cancelled_at=task["cancelled_at"],
        max_attempts=task["max_attempts"],
        attempts=attempts,
        runs=_group(steps),
        totals=TimelineTotals(
            tokens_spent=spent,
            tokens_saved=saved,
            steps=len(steps),
            steps_replayed=sum(1 for step in steps if step.replayed_by),
            waiting_seconds=waiting,
        ),
        forked_from=_forked_from(task),
        lost_executions=lost_executions(lost or [], attempts, steps),
    )


def _waits(
    task: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[tuple[str, Any, str | None, Any]],
    parsed_rows: list[ParsedName],
    decoded_rows: list[StepValue],
    now: datetime | None,
) -> dict[int, float]:
    claimed_at = {str(run["run_id"]): run["started_at"] for run in runs}
    ended: datetime | None = task["cancelled_at"]
    if str(task["state"]) in {"completed", "failed", "cancelled"} and ended is None and runs:
        ended = runs[-1]["completed_at"] or runs[-1]["failed_at"]
    open_until = ended if str(task["state"]) in {"completed", "failed", "cancelled"} else now
    wait_rows = [
        WaitRow(
            parsed=parsed,
            committed_at=updated_at,
            answered_inline=parsed.kind == "wait_for_input" and decoded.value is not None,
            claimed_at=claimed_at.get(owner or ""),
        )
        for parsed, decoded, (_, _, owner, updated_at) in zip(parsed_rows, decoded_rows, rows, strict=True)
    ]
    return wait_durations(wait_rows, open_until)


def _sleep_seconds(wake_at: str, committed_at: datetime) -> float:
    try:
        wake = datetime.fromisoformat(wake_at)
    except ValueError:
        return 0.0
    if wake.tzinfo is None or committed_at.tzinfo is None:
        return 0.0
    return max((wake - committed_at).total_seconds(), 0.0)


def _group(steps: list[StepRecord]) -> tuple[AgentRunRecord, ...]:
    groups: dict[tuple[str | None, int | None], list[StepRecord]] = {}
    for step in steps:
        groups.setdefault((step.agent, step.run_ordinal), []).append(step)
    records: list[AgentRunRecord] = []
    for (agent, ordinal), members in groups.items():
        usage = TokenUsage()
        for step in members:
            if step.usage is not None:
                usage += step.usage
        records.append(AgentRunRecord(agent, ordinal, tuple(members), usage))
    return tuple(records)


async def list_tasks(
    absurd: Source,
    *,
    queue: str | None = None,
    state: str | None = None,
    name: str | None = None,
    since: float | None = None,
    limit: int = 50,
) -> list[TaskSummary]:
    """Tasks newest first, with state, attempts, age and the latest step.

    Args:
        absurd: The `AsyncAbsurd` client, a psycopg `AsyncConnection` or a connection string.
        queue: Only this queue. Defaults to the client's; with a connection or a string, every queue.
        state: Only tasks in this state (pending, running, sleeping, completed, failed, cancelled).
        name: Only tasks with this task name.
        since: Only tasks spawned in the last `since` seconds.
        limit: At most this many tasks (across queues).
    """
    async with _connection(absurd) as conn:
        target = queue or _default_queue(absurd)
        queues = [target] if target is not None else await _queue_names(conn)
        now = await _absurd.database_now(conn)
        summaries: list[TaskSummary] = []
        for queue_name in queues:
            try:
                rows = await _absurd.list_tasks(
                    conn, queue_name, state=state, task_name=name, since_seconds=since, limit=limit
                )
                known = await registered_names(conn, queue_name)
            except psycopg.Error as err:
                mapped = _map(err, queue_name)
                if mapped is not None:
                    raise mapped from err
                raise
            summaries.extend(
                TaskSummary(
                    task_id=str(row["task_id"]),
                    queue=queue_name,
                    task_name=str(row["task_name"]),
                    state=str(row["state"]),
                    attempts=int(row["attempts"]),
                    enqueued_at=row["enqueue_at"],
                    age_seconds=max((now - row["enqueue_at"]).total_seconds(), 0.0),
                    last_step=row["last_step"],
                    last_step_at=row["last_step_at"],
                    claimed_by=row["claimed_by"],
                    known_to_workers=None if known is None else str(row["task_name"]) in known,
                )
                for row in rows
            )
    summaries.sort(key=lambda summary: summary.task_id, reverse=True)  # UUIDv7: spawn order
    return summaries[:limit]
