"""Assembling a `TaskTimeline` from Absurd's rows: who executed and who replayed each step, tokens, waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from .._absurd import CheckpointRow
from ._lost import lost_executions
from ._records import (
    AgentRunRecord,
    AttemptEnd,
    AttemptRecord,
    StepKind,
    StepRecord,
    TaskTimeline,
    TimelineTotals,
    TokenUsage,
)
from ._steps import ParsedName, StepValue, decode_value, parse_step_name
from ._waits import WaitRow, wait_durations

__all__ = ["FORKED_FROM_HEADER", "build_timeline"]

FORKED_FROM_HEADER = "pydantic_ai_absurd.forked_from"
"""Task header in which a fork records the task it was forked from (`verify.fork_task`); shown as `forked_from`."""


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


@dataclass(frozen=True)
class _Attempts:
    """How far each attempt of the task got, to tell which later attempts replayed a step."""

    attempt_of: dict[str, int]
    """Attempt number of each run id."""
    reached: dict[int, datetime | None]
    """The last checkpoint write of each attempt."""
    written: dict[int, int]
    """How many checkpoints each attempt wrote."""
    completed: set[int]
    reclaimed: dict[int, datetime]
    """Attempts claimed again after a suspension, a wait or a hand-back: their latest claim."""

    @classmethod
    def read(cls, runs: list[dict[str, Any]], rows: list[CheckpointRow]) -> _Attempts:
        attempt_of = {str(run["run_id"]): int(run["attempt"]) for run in runs}
        # How far each attempt got: a completed one went past everything; otherwise its last write.
        reached: dict[int, datetime | None] = {}
        written: dict[int, int] = {}
        for row in rows:
            attempt = attempt_of.get(row.owner_run_id or "")
            if attempt is not None:
                written[attempt] = written.get(attempt, 0) + 1
                previous = reached.get(attempt)
                reached[attempt] = row.updated_at if previous is None or row.updated_at > previous else previous
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
        return cls(attempt_of, reached, written, completed, reclaimed)

    def replayers(self, executed_by: int | None, committed_at: datetime) -> tuple[int, ...]:
        """The attempts that replayed a step `executed_by` wrote at `committed_at`."""
        if executed_by is None:
            return ()
        later = [
            attempt
            for attempt in sorted(set(self.attempt_of.values()))
            if attempt > executed_by
            and (attempt in self.completed or ((last := self.reached.get(attempt)) is not None and last > committed_at))
        ]
        claimed_again = self.reclaimed.get(executed_by)
        if claimed_again is not None and claimed_again > committed_at:
            later.insert(0, executed_by)
        return tuple(later)


@dataclass
class _StepTotals:
    spent: TokenUsage = field(default_factory=TokenUsage)
    saved: TokenUsage = field(default_factory=TokenUsage)
    waiting: float = 0.0
    """Seconds spent waiting for input, then sleeping."""


def _tool_call(
    parsed: ParsedName, decoded: StepValue, tool_calls: dict[tuple[str | None, int | None, str], tuple[str, Any]]
) -> tuple[str | None, Any]:
    """The tool name and arguments of a tool step, from the model response that asked for the call."""
    scope = (parsed.agent, parsed.run_ordinal)
    for call_id, tool, args in decoded.tool_calls:
        tool_calls[(*scope, call_id)] = (tool, args)
    tool_name, tool_args = parsed.tool_name, None
    if parsed.tool_call_id is not None:
        called = tool_calls.get((*scope, parsed.tool_call_id))
        if called is not None:
            tool_name = tool_name or called[0]
            tool_args = called[1]
    return tool_name, tool_args


def _step_records(
    rows: list[CheckpointRow],
    parsed_rows: list[ParsedName],
    decoded_rows: list[StepValue],
    attempts: _Attempts,
    waited: dict[int, float],
) -> tuple[list[StepRecord], _StepTotals]:
    """One `StepRecord` per checkpoint, and the tokens spent and saved and the time waited over them."""
    tool_calls: dict[tuple[str | None, int | None, str], tuple[str, Any]] = {}
    steps: list[StepRecord] = []
    totals = _StepTotals(waiting=sum(waited.values()))
    for index, row in enumerate(rows, start=1):
        parsed, decoded = parsed_rows[index - 1], decoded_rows[index - 1]
        executed_by = attempts.attempt_of.get(row.owner_run_id or "")
        replayed_by = attempts.replayers(executed_by, row.updated_at)
        tool_name, tool_args = _tool_call(parsed, decoded, tool_calls)
        if decoded.usage is not None:
            totals.spent += decoded.usage
            for _ in replayed_by:
                totals.saved += decoded.usage
        if parsed.kind == "sleep" and isinstance(decoded.value, str):
            totals.waiting += _sleep_seconds(decoded.value, row.updated_at)
        is_tool = parsed.kind in {"tool_call", "mcp_call", "validate_args"}
        steps.append(
            StepRecord(
                index=index,
                name=row.checkpoint_name,
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
                committed_at=row.updated_at,
                waited_seconds=waited.get(index - 1),
            )
        )
    return steps, totals


def _attempt_records(
    runs: list[dict[str, Any]], steps: list[StepRecord], written: dict[int, int]
) -> tuple[AttemptRecord, ...]:
    return tuple(
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


def build_timeline(
    queue: str,
    task: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[CheckpointRow],
    now: datetime | None = None,
    lost: list[dict[str, Any]] | None = None,
) -> TaskTimeline:
    """Assemble the timeline from the task's row, its runs and its checkpoints in write order.

    `now` is the database's time: a wait still unanswered counts until then. `lost` holds the task's
    recorded takeovers (`pydantic_ai_absurd.lost_executions` rows).
    """
    parsed_rows = [parse_step_name(row.checkpoint_name) for row in rows]
    decoded_rows = [decode_value(row.state, parsed.kind) for parsed, row in zip(parsed_rows, rows, strict=True)]
    waited = _waits(task, runs, rows, parsed_rows, decoded_rows, now)
    progress = _Attempts.read(runs, rows)
    steps, totals = _step_records(rows, parsed_rows, decoded_rows, progress, waited)
    attempts = _attempt_records(runs, steps, progress.written)
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
            tokens_spent=totals.spent,
            tokens_saved=totals.saved,
            steps=len(steps),
            steps_replayed=sum(1 for step in steps if step.replayed_by),
            waiting_seconds=totals.waiting,
        ),
        forked_from=_forked_from(task),
        lost_executions=lost_executions(lost or [], attempts, steps),
    )


def _waits(
    task: dict[str, Any],
    runs: list[dict[str, Any]],
    rows: list[CheckpointRow],
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
            committed_at=row.updated_at,
            answered_inline=parsed.kind == "wait_for_input" and decoded.value is not None,
            claimed_at=claimed_at.get(row.owner_run_id or ""),
        )
        for parsed, decoded, row in zip(parsed_rows, decoded_rows, rows, strict=True)
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
