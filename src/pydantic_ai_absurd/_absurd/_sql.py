"""Raw SQL on Absurd's runs: claims, scheduling, failing, events, and the workers' advisory locks.

With `_sql_tasks` (reads of tasks, runs and checkpoints, task copies) and `_sql_schema` (schema version
and queues), every statement on Absurd's functions and tables, and Absurd's SQLSTATEs. Prefer Absurd's
public SQL functions; each direct read or write of a per-queue table (`t_`, `r_`, `c_`, `e_` for tasks,
runs, checkpoints, events) says so in its docstring.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import psycopg
from absurd_sdk import RetryStrategy
from psycopg import AsyncConnection, sql

SQLSTATE_CANCELLED = "AB001"
"""Raised by Absurd's functions when the task was cancelled."""


SQLSTATE_FAILED = "AB002"
"""Raised by Absurd's functions when the run is no longer the task's running run (failed, lease expired)."""


def end_state_of(error: psycopg.Error) -> Literal["cancelled", "failed"] | None:
    """Which end state an Absurd SQL error reports, if any."""
    if error.sqlstate == SQLSTATE_CANCELLED:
        return "cancelled"
    if error.sqlstate == SQLSTATE_FAILED:
        return "failed"
    return None


async def schedule_run_now(conn: AsyncConnection[Any], queue_name: str, run_id: str) -> None:
    """Make a running run claimable again at once (`absurd.schedule_run`), without using an attempt."""
    await conn.execute("select absurd.schedule_run(%s, %s, absurd.current_time())", (queue_name, run_id))


async def schedule_run_at(conn: AsyncConnection[Any], queue_name: str, run_id: str, wake_at: datetime) -> None:
    """Put a running run to sleep until `wake_at` (`absurd.schedule_run`), without using an attempt."""
    await conn.execute("select absurd.schedule_run(%s, %s, %s)", (queue_name, run_id, wake_at))


async def exhaust_attempts(conn: AsyncConnection[Any], queue_name: str, run_id: str) -> None:
    """Lower the task's `max_attempts` to the attempt of `run_id`, so the run's failure fails the task for good.

    Absurd's own worker (`start_worker`) retries every failure while attempts are left; after this its `fail_run`
    finds them exhausted. Writes `t_<queue>.max_attempts`, reads `r_<queue>` (`run_id`, `task_id`, `attempt`).
    """
    await conn.execute(
        sql.SQL(
            "update absurd.{} as t set max_attempts = r.attempt from absurd.{} as r"
            " where r.run_id = %s and t.task_id = r.task_id"
        ).format(sql.Identifier(f"t_{queue_name}"), sql.Identifier(f"r_{queue_name}")),
        (run_id,),
    )


async def extend_claim(conn: AsyncConnection[Any], queue_name: str, run_id: str, seconds: int) -> None:
    """Extend a run's claim by `seconds` (`absurd.extend_claim`); raises AB001/AB002 when it has ended."""
    await conn.execute("select absurd.extend_claim(%s, %s, %s)", (queue_name, run_id, seconds))


async def fail_run(
    conn: AsyncConnection[Any],
    queue_name: str,
    run_id: str,
    reason: dict[str, Any],
    *,
    retry_after: RetryStrategy | None = None,
    attempt: int = 1,
) -> None:
    """Fail a run (`absurd.fail_run`); with `retry_after`, the next attempt waits that strategy's delay."""
    payload = json.dumps(reason, default=str)
    if retry_after is None:
        await conn.execute("select absurd.fail_run(%s, %s, %s::jsonb, null)", (queue_name, run_id, payload))
        return
    await conn.execute(
        "select absurd.fail_run(%s, %s, %s::jsonb, absurd.current_time()"
        " + make_interval(secs => absurd.retry_delay_seconds(%s::jsonb, %s)))",
        (queue_name, run_id, payload, json.dumps(retry_after), attempt),
    )


async def fail_task_permanently(
    conn: AsyncConnection[Any], queue_name: str, run_id: str, reason: dict[str, Any]
) -> None:
    """Fail the run `run_id` and its task for good, recording `reason`, whatever attempts are left.

    Absurd has no SQL function for this. In one transaction we lock the run (the same lock order as
    `absurd.fail_run` and `absurd.cancel_task`: run, then task), lower the task's `max_attempts` to the
    run's attempt, and call `absurd.fail_run`, which then sees the attempts exhausted: the task
    ends in state `failed` with `reason` as failure reason and `absurd.retry_task` can still retry it.
    Writes to Absurd's `t_<queue>` table (columns `task_id`, `max_attempts`) and reads `r_<queue>`
    (`run_id`, `task_id`, `attempt`); `tests/unit/worker/test_retry.py` pins that.
    """
    runs = sql.Identifier(f"r_{queue_name}")
    tasks = sql.Identifier(f"t_{queue_name}")
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("select task_id, attempt from absurd.{} where run_id = %s for update").format(runs), (run_id,)
        )
        row = await cur.fetchone()
        if row is not None:
            task_id, attempt = cast("tuple[Any, int]", row)
            await conn.execute(
                sql.SQL("update absurd.{} set max_attempts = %s where task_id = %s").format(tasks), (attempt, task_id)
            )
        await fail_run(conn, queue_name, run_id, reason)


async def emit_event_sql(conn: AsyncConnection[Any], queue_name: str, event_name: str, payload: Any) -> None:
    """Emit an event on `conn` (`absurd.emit_event`), inside the caller's transaction; first emit wins."""
    await conn.execute("select absurd.emit_event(%s, %s, %s::jsonb)", (queue_name, event_name, json.dumps(payload)))


async def backend_pid(conn: AsyncConnection[Any]) -> int:
    """`pg_backend_pid()` of the server process answering this statement on `conn`."""
    cur = await conn.execute("select pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def hold_worker_lock(conn: AsyncConnection[Any], identity: str) -> int:
    """Take the session-level shared advisory lock of `identity` on `conn`; return the backend pid holding it.

    `pg_advisory_lock_shared(hashtextextended(identity, 0))`: held until the session ends, i.e. until the
    process dies or the connection is closed (Postgres releases session locks when the backend exits).
    Shared, so the worker's several lock connections never wait for each other.
    """
    cur = await conn.execute("select pg_advisory_lock_shared(hashtextextended(%s, 0)), pg_backend_pid()", (identity,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[1])


async def worker_lock_held(conn: AsyncConnection[Any], identity: str, pid: int) -> bool:
    """Whether the backend `pid` holds the advisory lock of `identity` in this database (reads `pg_locks`).

    An advisory lock on a bigint key shows in `pg_locks` with `classid` = its high and `objid` = its low
    32 bits and `objsubid` = 1.
    """
    cur = await conn.execute(
        "select exists (select 1 from pg_locks l"
        " where l.locktype = 'advisory' and l.granted and l.objsubid = 1 and l.pid = %s"
        " and l.database = (select oid from pg_database where datname = current_database())"
        " and ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended(%s, 0))",
        (pid, identity),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class OrphanedRun:
    """A run handed back because its worker died: what `r_<queue>` said of it just before."""

    run_id: str
    task_id: str
    attempt: int
    claimed_by: str
    claimed_at: Any
    """`started_at`: when the dead worker claimed it."""
    handed_back_at: Any


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def takeover_candidates(
    conn: AsyncConnection[Any], queue_name: str, claim_prefix: str, lock_prefix: str, own_identity: str
) -> list[tuple[str, bool]]:
    """The identities of other workers of this package with running runs in `queue_name`; one statement, no lock kept.

    Each comes with whether it looks dead: for an identity starting with `lock_prefix`, whether nobody holds its
    worker lock (`pg_try_advisory_xact_lock` succeeds; released when the statement ends); any other identity
    (a liveness row's) is returned with false, for the caller to check. Reads `absurd.r_<queue>` (`state`,
    `claimed_by`). An idle worker alone on its queue sends just this statement per takeover check.
    """
    query = sql.SQL(
        "with ids as materialized (select distinct claimed_by from absurd.{} where state = 'running'"
        " and claimed_by like %s and claimed_by <> %s)"
        " select claimed_by, case when claimed_by like %s"
        " then pg_try_advisory_xact_lock(hashtextextended(claimed_by, 0)) else false end from ids"
    ).format(sql.Identifier(f"r_{queue_name}"))
    params = (_like_prefix(claim_prefix), own_identity, _like_prefix(lock_prefix))
    cur = await conn.execute(query, params)
    return [(str(identity), bool(dead)) for identity, dead in await cur.fetchall()]


async def hand_back_orphaned_runs(
    conn: AsyncConnection[Any],
    queue_name: str,
    identities: list[str],
    record: Callable[[AsyncConnection[Any], list[OrphanedRun]], Awaitable[None]] | None = None,
) -> list[OrphanedRun]:
    """Hand back the running runs of `queue_name` claimed in those of `identities` whose worker is dead.

    `identities` are worker-lock identities (`takeover_candidates` found them dead a moment ago). An identity
    is dead when `pg_try_advisory_xact_lock` on its lock key succeeds: no session holds that worker's shared
    lock (see `hold_worker_lock`), so every connection of that worker is gone; the lock is held until the
    transaction ends. The runs of a dead identity are locked (`for update skip locked`: one peer handles
    each) and handed back with `absurd.schedule_run(queue, run_id, now)`: claimable at once, no attempt
    used. `record` is awaited with the handed-back runs in the same transaction. Runs of live workers are
    neither locked nor touched. Reads `absurd.r_<queue>` (`run_id`, `task_id`, `attempt`, `state`,
    `claimed_by`, `started_at`).
    """
    query = sql.SQL(
        "select run_id::text, task_id::text, attempt, claimed_by, started_at, absurd.current_time() from absurd.{}"
        " where state = 'running' and claimed_by = any(%s) order by run_id for update skip locked"
    ).format(sql.Identifier(f"r_{queue_name}"))
    async with conn.transaction():
        cur = await conn.execute(
            "select id from unnest(%s::text[]) as id where pg_try_advisory_xact_lock(hashtextextended(id, 0))",
            (identities,),
        )
        dead = [str(row[0]) for row in await cur.fetchall()]  # alive ones hold their lock, even if paused or slow
        if not dead:
            return []
        cur = await conn.execute(query, (dead,))
        handed_back = [OrphanedRun(str(a), str(b), int(c), str(d), e, f) for a, b, c, d, e, f in await cur.fetchall()]
        if handed_back:
            await conn.execute(
                "select absurd.schedule_run(%s, id, absurd.current_time()) from unnest(%s::uuid[]) as id",
                (queue_name, [run.run_id for run in handed_back]),
            )
        if handed_back and record is not None:
            await record(conn, handed_back)
    return handed_back
