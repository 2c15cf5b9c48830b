"""Raw SQL for a worker's claims in bulk: one statement extends the claims of all its in-flight runs.

Absurd's `absurd.extend_claim(queue, run_id, seconds)` extends one run and raises AB001 / AB002 when the task
was cancelled or the run failed. A worker with hundreds of runs in flight would send hundreds of such
statements per heartbeat interval; `extend_claims` does the same checks for all of them in one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from psycopg import AsyncConnection, sql

__all__ = ["extend_claims"]

EndedRun = tuple[str, Literal["cancelled", "failed"]]


async def extend_claims(
    conn: AsyncConnection[Any], queue_name: str, run_ids: Sequence[str], seconds: int
) -> list[EndedRun]:
    """Extend the claims of the running runs among `run_ids` by `seconds`; return the runs that have ended.

    As `absurd.extend_claim` does for one run: a run whose task was cancelled is reported `"cancelled"` and
    one that failed (its lease expired and another worker failed it) `"failed"`; neither is extended. A run
    that is no longer running for another reason (handed back, completed) is neither extended nor reported.
    Writes `absurd.r_<queue>.claim_expires_at`, reads `r_<queue>` and `t_<queue>` (`state`). One statement;
    rows are locked in `run_id` order, as a single writer of those runs locks them one at a time.
    """
    if not run_ids:
        return []
    query = sql.SQL(
        "with ids as (select unnest(%(ids)s::uuid[]) as run_id),"
        " current as (select r.run_id, r.state as run_state, t.state as task_state"
        "  from absurd.{runs} r join ids using (run_id) join absurd.{tasks} t on t.task_id = r.task_id"
        "  order by r.run_id for update of r),"
        " extended as (update absurd.{runs} r"
        "  set claim_expires_at = absurd.current_time() + make_interval(secs => %(seconds)s)"
        "  from current c where r.run_id = c.run_id and c.run_state = 'running' and c.task_state <> 'cancelled'"
        "  and r.claim_expires_at is not null returning r.run_id)"
        " select run_id::text, case when task_state = 'cancelled' then 'cancelled' else 'failed' end"
        " from current where task_state = 'cancelled' or run_state = 'failed'"
    ).format(runs=sql.Identifier(f"r_{queue_name}"), tasks=sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, {"ids": list(run_ids), "seconds": seconds})
    return [(str(run_id), state) for run_id, state in await cur.fetchall()]
