"""A tool step's checkpoint written inside the caller's open transaction (`durable_transaction`).

`absurd.set_task_checkpoint_state` is an ordinary SQL function, so it can run in a transaction the tool
opened on its own connection: the tool's rows and its checkpoint then commit together, or not at all.
Before it, `absurd.extend_claim` locks the run's row (`for update`) and checks the run is still the
task's running run (AB002 when it failed, AB001 when the task was cancelled): until this transaction
ends, no other worker can fail the run and start a new one (`claim_task` skips locked runs), so a new
run can never execute the tool while these rows are on their way to commit.

After the commit, the SDK's checkpoint cache is told the step is done (`_private.remember_checkpoint`), as
`complete_step` would have.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import psycopg
from absurd_sdk import AsyncTaskContext, CancelledTask, FailedTask
from psycopg import AsyncConnection

from ._private import claim_timeout_of, claimed_task_of, remember_checkpoint, task_identity
from ._sql import end_state_of

__all__ = ["raise_end_state", "remember_checkpoint", "write_checkpoint_in"]


async def write_checkpoint_in(
    conn: AsyncConnection[Any], task_ctx: AsyncTaskContext, checkpoint_name: str, state: object
) -> None:
    """Queue the checkpoint write of `task_ctx`'s step `checkpoint_name` on `conn`, inside its open transaction.

    Sends `absurd.extend_claim` (which locks the run row and fails when the run has ended) and
    `absurd.set_task_checkpoint_state`; in pipeline mode their errors surface at the caller's commit.
    """
    queue, _ = task_identity(task_ctx)
    task = claimed_task_of(task_ctx)
    seconds = max(1, round(claim_timeout_of(task_ctx)))
    await conn.execute("select absurd.extend_claim(%s, %s, %s)", (queue, task["run_id"], seconds))
    await conn.execute(
        "select absurd.set_task_checkpoint_state(%s, %s, %s, %s, %s, %s)",
        (queue, task["task_id"], checkpoint_name, json.dumps(state), task["run_id"], seconds),
    )


def raise_end_state(error: psycopg.Error) -> None:
    """Raise Absurd's `CancelledTask` / `FailedTask` for an error that reports the run's end; return otherwise."""
    ended = end_state_of(error)
    if ended is not None:
        _raise(ended, error)


def _raise(ended: str, error: psycopg.Error) -> NoReturn:
    if ended == "cancelled":
        raise CancelledTask() from error
    raise FailedTask() from error
