"""Lost executions: attempts whose worker died, from our takeover records and Absurd's expired leases.

A run taken over after its worker died keeps its attempt number (`absurd.schedule_run` hands it back), so
Absurd's run row no longer shows the dead worker: the worker that took it over recorded it
(`pydantic_ai_absurd.lost_executions`). A run whose lease expired is failed by Absurd (`$ClaimTimeout`)
and the next attempt resumes from the checkpoints.

Which steps were in flight is not written anywhere (a step that did not commit left no trace); they are
the steps that ran again after the loss: the first step committed afterwards and, when that is a tool
step, the other tool steps of the same agent run before its next model request (tool calls of one
model response run concurrently).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._records import AttemptRecord, LostExecution, StepRecord

__all__ = ["lost_executions"]


def lost_executions(
    recorded: Sequence[dict[str, Any]], attempts: Sequence[AttemptRecord], steps: Sequence[StepRecord]
) -> tuple[LostExecution, ...]:
    """Every lost execution of a task, oldest first."""
    found: list[LostExecution] = [
        LostExecution(
            attempt=int(row["attempt"]),
            how="worker_died",
            worker=row["worker"],
            claimed_at=row["claimed_at"],
            lost_at=row["taken_over_at"],
            taken_over_by=row["taken_over_by"],
            reran=_reran(steps, {int(row["attempt"])}, row["taken_over_at"]),
        )
        for row in recorded
    ]
    for position, attempt in enumerate(attempts):
        if attempt.ended != "lease_expired":
            continue
        following = attempts[position + 1] if position + 1 < len(attempts) else None
        later = {other.attempt for other in attempts if other.attempt > attempt.attempt}
        found.append(
            LostExecution(
                attempt=attempt.attempt,
                how="lease_expired",
                worker=attempt.claimed_by,
                claimed_at=attempt.started_at,
                lost_at=attempt.finished_at,
                taken_over_by=None if following is None else following.claimed_by,
                reran=_reran(steps, later, attempt.finished_at),
            )
        )
    return tuple(sorted(found, key=lambda lost: (lost.lost_at is None, lost.lost_at or datetime.min, lost.attempt)))


def _reran(steps: Sequence[StepRecord], attempts: set[int], after: datetime | None) -> tuple[int, ...]:
    if after is None:
        return ()
    later = [
        step
        for step in steps
        if step.executed_by in attempts and step.committed_at is not None and step.committed_at > after
    ]
    if not later:
        return ()
    first = later[0]
    reran = [first.index]
    if first.tool_call_id is None or first.kind == "model_request":
        return tuple(reran)
    for step in later[1:]:
        if (step.agent, step.run_ordinal) != (first.agent, first.run_ordinal):
            continue
        if step.kind == "model_request":
            break
        if step.tool_call_id is not None:
            reran.append(step.index)
    return tuple(reran)
