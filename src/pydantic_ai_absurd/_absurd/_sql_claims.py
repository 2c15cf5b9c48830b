"""Raw SQL for a worker's claims: claims with their checkpoints, and one statement extending all in-flight claims.

Absurd's `absurd.extend_claim(queue, run_id, seconds)` extends one run and raises AB001 / AB002 when the task
was cancelled or the run failed. A worker with hundreds of runs in flight would send hundreds of such
statements per heartbeat interval; `extend_claims` does the same checks for all of them in one statement.

`claim_with_checkpoints` claims as `AsyncAbsurd.claim_tasks` does and reads, in the same statement, the
checkpoints the SDK preloads when it starts executing each claimed run (one round trip instead of two).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, cast

from absurd_sdk import ClaimedTask
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

__all__ = ["CHECKPOINT_PRELOAD", "claim_with_checkpoints", "extend_claims"]

CHECKPOINT_PRELOAD = """SELECT checkpoint_name, state, status, owner_run_id, updated_at
            FROM absurd.get_task_checkpoint_states(%s, %s, %s)"""
"""The statement `absurd_sdk._create_async_task_context` preloads a run's checkpoints with (absurd-sdk 0.5.1),
params `(queue, task_id, run_id)`, rows as `dict_row` makes them (pinned by `tests/unit/compat`)."""

_CLAIM_WITH_CHECKPOINTS = """SELECT c.run_id, c.task_id, c.attempt, c.task_name, c.params, c.retry_strategy,
       c.max_attempts, c.headers, c.wake_event, c.event_payload,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(s.checkpoint_name, s.state, s.status, s.owner_run_id,
                                                    s.updated_at) ORDER BY s.updated_at), '[]'::jsonb)
          FROM absurd.get_task_checkpoint_states(%(queue)s, c.task_id, c.run_id) s) AS checkpoints
  FROM absurd.claim_task(%(queue)s, %(worker)s, %(timeout)s, %(qty)s) c"""
"""`AsyncAbsurd.claim_tasks`'s statement, with what `CHECKPOINT_PRELOAD` returns for each claimed run."""

Preloaded = tuple[tuple[str, Any, Any], list[dict[str, Any]]]
"""The params of a run's `CHECKPOINT_PRELOAD` and the rows it returns."""

EndedRun = tuple[str, Literal["cancelled", "failed", "taken_over"]]


async def extend_claims(
    conn: AsyncConnection[Any], queue_name: str, runs: Sequence[tuple[str, str | None]], seconds: int
) -> list[EndedRun]:
    """Extend the claims of the running runs among `runs` by `seconds`; return the runs that have ended.

    `runs` are `(run_id, claimed_by)` pairs: a run is extended only while it is still claimed in that identity
    (`None`: in any). As `absurd.extend_claim` does for one run: a run whose task was cancelled is reported
    `"cancelled"` and one that failed (its lease expired and another worker failed it) `"failed"`; neither is
    extended. A run running in another identity (a peer took it over: handed back, then claimed again) is
    reported `"taken_over"` and not extended. A run that is no longer running for another reason (handed
    back and not claimed yet, suspended, completed) is neither extended nor reported.
    Writes `absurd.r_<queue>.claim_expires_at`, reads `r_<queue>` (`state`, `claimed_by`) and `t_<queue>`
    (`state`). One statement; rows are locked in `run_id` order, as a single writer of those runs locks them
    one at a time.
    """
    if not runs:
        return []
    query = sql.SQL(
        "with ids as (select * from unnest(%(ids)s::uuid[], %(owners)s::text[]) as i(run_id, owner)),"
        " current as (select r.run_id, r.state as run_state, t.state as task_state,"
        "  r.claimed_by is distinct from ids.owner and ids.owner is not null as moved"
        "  from absurd.{runs} r join ids using (run_id) join absurd.{tasks} t on t.task_id = r.task_id"
        "  order by r.run_id for update of r),"
        " extended as (update absurd.{runs} r"
        "  set claim_expires_at = absurd.current_time() + make_interval(secs => %(seconds)s)"
        "  from current c where r.run_id = c.run_id and c.run_state = 'running' and c.task_state <> 'cancelled'"
        "  and not c.moved and r.claim_expires_at is not null returning r.run_id)"
        " select run_id::text, case when task_state = 'cancelled' then 'cancelled'"
        "  when run_state = 'failed' then 'failed' else 'taken_over' end"
        " from current where task_state = 'cancelled' or run_state = 'failed' or (run_state = 'running' and moved)"
    ).format(runs=sql.Identifier(f"r_{queue_name}"), tasks=sql.Identifier(f"t_{queue_name}"))
    params = {"ids": [run_id for run_id, _ in runs], "owners": [owner for _, owner in runs], "seconds": seconds}
    cur = await conn.execute(query, params)
    return [(str(run_id), state) for run_id, state in await cur.fetchall()]


async def claim_with_checkpoints(
    conn: AsyncConnection[Any], queue_name: str, worker_id: str, claim_timeout: int, qty: int
) -> list[tuple[ClaimedTask, Preloaded]]:
    """Claim up to `qty` runs as `AsyncAbsurd.claim_tasks` does, each with its checkpoint preload's answer.

    The checkpoints are read in the claim's own statement, after the claim (no other run of the task can
    write any once this one is claimed: Absurd refuses the writes of older runs).
    """
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        _CLAIM_WITH_CHECKPOINTS,
        {"queue": queue_name, "worker": worker_id, "timeout": claim_timeout, "qty": qty},
    )
    claimed: list[tuple[ClaimedTask, Preloaded]] = []
    for row in await cur.fetchall():
        checkpoints = cast(list[list[Any]], row.pop("checkpoints"))
        rows = [_checkpoint_row(*entry) for entry in checkpoints]
        claimed.append((cast(ClaimedTask, row), ((queue_name, row["task_id"], row["run_id"]), rows)))
    return claimed


def _checkpoint_row(name: str, state: Any, status: str, owner: str | None, updated_at: str) -> dict[str, Any]:
    """A row of `CHECKPOINT_PRELOAD` as `dict_row` makes it, from its JSON form."""
    return {
        "checkpoint_name": name,
        "state": state,
        "status": status,
        "owner_run_id": None if owner is None else uuid.UUID(owner),
        "updated_at": datetime.fromisoformat(updated_at),
    }
