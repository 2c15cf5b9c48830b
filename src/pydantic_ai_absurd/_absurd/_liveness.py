"""Fast takeover behind a transaction pooler: the liveness rows of workers and the runs of the stale ones.

The rows live in `pydantic_ai_absurd.worker_liveness` (migration `007_worker_liveness`); runs in
`absurd.r_<queue>`. A worker's beat and a peer's takeover touch the same row, so Postgres' row lock orders
them: a takeover that waited for a beat re-reads the row (READ COMMITTED re-checks the `where` of a
`delete` on the row's newest version) and leaves a worker that has just beaten alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from psycopg import AsyncConnection, Connection, sql

from ._sql import OrphanedRun

__all__ = [
    "beat_liveness_row",
    "delete_liveness_row",
    "hand_back_runs_of_stale_workers",
    "hold_liveness_row",
    "insert_liveness_row",
]

_TABLE: Final = "pydantic_ai_absurd.worker_liveness"


def insert_liveness_row(conn: Connection[Any], identity: str, queue_name: str) -> None:
    """Insert (or refresh) the liveness row of `identity`, a worker of `queue_name`."""
    conn.execute(
        f"insert into {_TABLE} (identity, queue_name) values (%s, %s)"
        " on conflict (identity) do update set beat_at = clock_timestamp()",
        (identity, queue_name),
    )


def beat_liveness_row(conn: Connection[Any], identity: str) -> bool:
    """One beat: `beat_at = now`. False when the row is gone (a peer presumed the worker dead)."""
    cur = conn.execute(f"update {_TABLE} set beat_at = clock_timestamp() where identity = %s", (identity,))
    return cur.rowcount == 1


async def hold_liveness_row(conn: AsyncConnection[Any], identity: str) -> bool:
    """In the caller's transaction, lock the row of `identity` against deletion (`for share`); false if gone."""
    cur = await conn.execute(f"select 1 from {_TABLE} where identity = %s for share", (identity,))
    return await cur.fetchone() is not None


def delete_liveness_row(conn: Connection[Any], identity: str) -> None:
    """Remove the row of a worker that stops cleanly."""
    conn.execute(f"delete from {_TABLE} where identity = %s", (identity,))


async def hand_back_runs_of_stale_workers(
    conn: AsyncConnection[Any],
    queue_name: str,
    claim_prefix: str,
    own_identity: str,
    stale_after: float,
    record: Callable[[AsyncConnection[Any], list[OrphanedRun]], Awaitable[None]] | None = None,
) -> list[OrphanedRun]:
    """Delete the rows of `queue_name` not beaten for `stale_after` seconds; hand back the runs of dead workers.

    A run is handed back (`absurd.schedule_run(queue, run_id, now)`: claimable at once, no attempt used)
    when it is running, claimed in an identity starting with `claim_prefix` other than `own_identity`, and
    that identity has no liveness row any more (deleted now as stale, or earlier). A worker inserts its
    row before it claims in its identity, so a run of a live worker always has a fresh row. One
    transaction; `record` is awaited with the handed-back runs in it.
    """
    escaped = claim_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    candidates = sql.SQL(
        "select r.run_id::text, r.task_id::text, r.attempt, r.claimed_by, r.started_at, absurd.current_time()"
        " from absurd.{} r where r.state = 'running' and r.claimed_by like %s and r.claimed_by <> %s"
        " and not exists (select 1 from " + _TABLE + " w where w.identity = r.claimed_by)"
        " for update of r skip locked"
    ).format(sql.Identifier(f"r_{queue_name}"))
    async with conn.transaction():
        await conn.execute(
            f"delete from {_TABLE} where queue_name = %s and identity <> %s"
            " and beat_at < clock_timestamp() - make_interval(secs => %s)",
            (queue_name, own_identity, stale_after),
        )
        cur = await conn.execute(candidates, (escaped + "%", own_identity))
        runs = [OrphanedRun(str(a), str(b), int(c), str(d), e, f) for a, b, c, d, e, f in await cur.fetchall()]
        for run in runs:
            await conn.execute("select absurd.schedule_run(%s, %s, absurd.current_time())", (queue_name, run.run_id))
        if runs and record is not None:
            await record(conn, runs)
    return runs
