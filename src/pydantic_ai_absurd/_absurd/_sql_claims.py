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
