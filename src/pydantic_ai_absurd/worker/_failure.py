"""What the worker writes when a task handler raised: a retry per the policy, or a failure for good."""

from __future__ import annotations

from typing import Any

from absurd_sdk import ClaimedTask
from psycopg import AsyncConnection

from .._absurd import fail_run, fail_task_permanently
from ._retry import FailureOutcome, RetryPolicy, failure_reason

__all__ = ["record_task_failure"]


async def record_task_failure(
    conn: AsyncConnection[Any], queue_name: str, task: ClaimedTask, err: BaseException, policy: RetryPolicy
) -> tuple[FailureOutcome, str | None]:
    """Fail the run of `task` after `err`: for good if `err` is non-retryable, else per the retry strategy.

    Returns the outcome and, for non-retryable errors, the reason. A retryable failure of a task that
    has no `retry_strategy` of its own is rescheduled after `policy.default_strategy`'s delay
    (computed by Absurd's `absurd.retry_delay_seconds`).
    """
    reason = policy.non_retryable_reason(err)
    if reason is not None:
        await fail_task_permanently(
            conn, queue_name, task["run_id"], failure_reason(err, retryable=False, reason=reason)
        )
        return "failed", reason
    strategy = policy.default_strategy if task.get("retry_strategy") is None else None
    await fail_run(
        conn,
        queue_name,
        task["run_id"],
        failure_reason(err, retryable=True),
        retry_after=strategy,
        attempt=task["attempt"],
    )
    max_attempts = task.get("max_attempts")
    if max_attempts is not None and task["attempt"] >= max_attempts:
        return "failed", None
    return "retry", None
