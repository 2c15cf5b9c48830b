"""Raw SQL on Absurd's functions and tables, and Absurd's SQLSTATEs: with `_sql_schema`, every such statement.

Prefer Absurd's public SQL functions; each direct read or write of a per-queue table (`t_`, `r_`, `c_`, `e_`
for tasks, runs, checkpoints, events) says so in its docstring.
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


async def read_task(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """One task's row from `t_<queue>`, with `result` and `failure_reason` from `absurd.get_task_result`.

    Columns: `task_name, params, headers, state, attempts, max_attempts, enqueue_at, first_started_at,
    cancelled_at, last_attempt_run`. `None` when the queue has no such task.
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.params, t.headers, t.state, t.attempts, t.max_attempts,"
        " t.enqueue_at, t.first_started_at, t.cancelled_at, t.last_attempt_run::text as last_attempt_run,"
        " g.result, g.failure_reason"
        " from absurd.{} t cross join lateral absurd.get_task_result(%s, t.task_id) g"
        " where t.task_id = %s"
    ).format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (queue_name, task_id))
    return await _one_dict(cur)


async def read_runs(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[dict[str, Any]]:
    """A task's runs (one per attempt) from `r_<queue>`, oldest first.

    Columns: `run_id, attempt, state, claimed_by, claim_expires_at, available_at, wake_event, started_at`
    (the latest claim), `completed_at, failed_at, failure_reason, created_at`. A run waiting for an event
    without timeout is available at `infinity`, read as `None`.
    """
    query = sql.SQL(
        "select run_id::text as run_id, attempt, state, claimed_by,"
        " nullif(claim_expires_at, 'infinity') as claim_expires_at,"
        " nullif(available_at, 'infinity') as available_at, wake_event,"
        " started_at, completed_at, failed_at, failure_reason, created_at"
        " from absurd.{} where task_id = %s order by attempt, created_at"
    ).format(sql.Identifier(f"r_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    return await _all_dicts(cur)


async def read_checkpoints(
    conn: AsyncConnection[Any], queue_name: str, task_id: str, run_id: str
) -> list[tuple[str, Any, str | None, Any]]:
    """The committed checkpoints `run_id` sees (`absurd.get_task_checkpoint_states`), in write order.

    Rows: `(checkpoint_name, state, owner_run_id, updated_at)`. Given the task's latest run, that is all of them.
    """
    cur = await conn.execute(
        "select checkpoint_name, state, owner_run_id::text, updated_at"
        " from absurd.get_task_checkpoint_states(%s, %s, %s)",
        (queue_name, task_id, run_id),
    )
    return cast("list[tuple[str, Any, str | None, Any]]", await cur.fetchall())


async def list_queue_names(conn: AsyncConnection[Any]) -> list[str]:
    """Every queue's name (`absurd.list_queues()`)."""
    cur = await conn.execute("select queue_name from absurd.list_queues() order by queue_name")
    return [str(row[0]) for row in await cur.fetchall()]


async def list_tasks(
    conn: AsyncConnection[Any],
    queue_name: str,
    *,
    state: str | None = None,
    task_name: str | None = None,
    since_seconds: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Tasks of a queue from `t_<queue>`, newest first (task ids are UUIDv7, so the primary key is in spawn order).

    Each with its latest run from `r_<queue>` (`run_state`, `claimed_by`) and its latest committed checkpoint
    from `c_<queue>` (`last_step`, `last_step_at`).
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.state, t.attempts, t.enqueue_at, t.first_started_at,"
        " t.headers, r.state as run_state, r.claimed_by, r.completed_at, r.failed_at,"
        " c.checkpoint_name as last_step, c.updated_at as last_step_at"
        " from absurd.{tasks} t"
        " left join absurd.{runs} r on r.run_id = t.last_attempt_run"
        " left join lateral (select checkpoint_name, updated_at from absurd.{checkpoints} c"
        "   where c.task_id = t.task_id and c.status = 'committed'"
        "   order by c.updated_at desc limit 1) c on true"
        " where (%(state)s::text is null or t.state = %(state)s)"
        " and (%(name)s::text is null or t.task_name = %(name)s)"
        " and (%(since)s::float8 is null"
        "      or t.enqueue_at >= absurd.current_time() - make_interval(secs => %(since)s::float8))"
        " order by t.task_id desc limit %(limit)s"
    ).format(
        tasks=sql.Identifier(f"t_{queue_name}"),
        runs=sql.Identifier(f"r_{queue_name}"),
        checkpoints=sql.Identifier(f"c_{queue_name}"),
    )
    cur = await conn.execute(query, {"state": state, "name": task_name, "since": since_seconds, "limit": limit})
    return await _all_dicts(cur)


async def database_now(conn: AsyncConnection[Any]) -> Any:
    """Absurd's clock (`absurd.current_time()`), to compute ages against the database's time."""
    cur = await conn.execute("select absurd.current_time()")
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _one_dict(cur: psycopg.AsyncCursor[Any]) -> dict[str, Any] | None:
    row = await cur.fetchone()
    if row is None:
        return None
    names = [column.name for column in cur.description or ()]
    return dict(zip(names, row, strict=True))


async def _all_dicts(cur: psycopg.AsyncCursor[Any]) -> list[dict[str, Any]]:
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def emit_event_sql(conn: AsyncConnection[Any], queue_name: str, event_name: str, payload: Any) -> None:
    """Emit an event on `conn` (`absurd.emit_event`), inside the caller's transaction; first emit wins."""
    await conn.execute("select absurd.emit_event(%s, %s, %s::jsonb)", (queue_name, event_name, json.dumps(payload)))


TASK_STATES = ("pending", "running", "sleeping", "completed", "failed", "cancelled")
"""Every state of an Absurd task."""

TERMINAL_TASK_STATES = ("completed", "failed", "cancelled")


"""States of a row of `absurd.t_<queue>` after which the task never runs again (unless retried by hand)."""


def task_states(queue_name: str) -> sql.Composed:
    """`absurd.t_<queue>` as an identifier (columns `task_id uuid`, `state text`), for joins on task state."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"t_{queue_name}"))


def emitted_events(queue_name: str) -> sql.Composed:
    """`absurd.e_<queue>` as an identifier (`event_name text primary key`, `payload jsonb`; SQL NULL = not emitted)."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"e_{queue_name}"))


async def existing_queues(conn: AsyncConnection[Any], names: list[str]) -> list[str]:
    """Which of `names` are queues of this database (rows of `absurd.queues`)."""
    cur = await conn.execute("select queue_name from absurd.queues where queue_name = any(%s)", (names,))
    return [str(row[0]) for row in await cur.fetchall()]


async def task_ids_in_states(conn: AsyncConnection[Any], queue_name: str, states: list[str]) -> list[str]:
    """IDs of the tasks of `queue_name` whose state is one of `states`, oldest first (reads `t_<queue>`)."""
    query = sql.SQL("select task_id::text from absurd.{} where state = any(%s) order by enqueue_at, task_id").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (states,))
    return [str(row[0]) for row in await cur.fetchall()]


async def task_options(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """A task's `retry_strategy`, `max_attempts` and `cancellation` (reads `t_<queue>`), for a copy of it."""
    query = sql.SQL("select retry_strategy, max_attempts, cancellation from absurd.{} where task_id = %s").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (task_id,))
    return await _one_dict(cur)


async def spawn_with_checkpoints(
    conn: AsyncConnection[Any],
    queue_name: str,
    task_name: str,
    params: Any,
    options: dict[str, Any],
    checkpoints: list[tuple[str, Any]],
) -> str:
    """Spawn a task that already has `checkpoints` (name, state), in one transaction; return its ID.

    `absurd.spawn_task`, then `absurd.set_task_checkpoint_state` for each checkpoint, owned by the new run.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "select task_id::text, run_id::text from absurd.spawn_task(%s, %s, %s::jsonb, %s::jsonb)",
            (queue_name, task_name, json.dumps(params), json.dumps(options)),
        )
        row = await cur.fetchone()
        assert row is not None
        task_id, run_id = str(row[0]), str(row[1])
        for name, state in checkpoints:
            await conn.execute(
                "select absurd.set_task_checkpoint_state(%s, %s, %s, %s::jsonb, %s, null)",
                (queue_name, task_id, name, json.dumps(state), run_id),
            )
    return task_id


async def task_state(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> str | None:
    """A task's state (`pending`, `running`, `sleeping`, `completed`, `failed`, `cancelled`) from `t_<queue>`.

    `None` when the queue has no such task (a wrong id, or a task removed by Absurd's cleanup).
    """
    query = sql.SQL("select state from absurd.{} where task_id = %s").format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


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


async def hand_back_orphaned_runs(
    conn: AsyncConnection[Any],
    queue_name: str,
    claim_prefix: str,
    own_identity: str,
    record: Callable[[AsyncConnection[Any], list[OrphanedRun]], Awaitable[None]] | None = None,
) -> list[OrphanedRun]:
    """Hand back the running runs of `queue_name` whose worker is dead, and return them.

    A run is a candidate when its `claimed_by` starts with `claim_prefix` (claims of this package's
    workers: runs of other workers are never touched) and is not `own_identity`. It is orphaned when
    `pg_try_advisory_xact_lock` on its worker's lock key succeeds: no session holds that worker's shared
    lock (see `hold_worker_lock`), so every connection of that worker is gone. Each candidate is locked
    first (`for update skip locked`: one peer handles it), and an orphaned one is handed back with
    `absurd.schedule_run(queue, run_id, now)`: claimable at once, no attempt used. `record` is awaited with
    the handed-back runs in the same transaction. One transaction; the transaction-level locks end with
    it. Reads `absurd.r_<queue>` (`run_id`, `task_id`, `attempt`, `state`, `claimed_by`, `started_at`).
    """
    runs = sql.Identifier(f"r_{queue_name}")
    escaped = claim_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = sql.SQL(
        "select run_id::text, task_id::text, attempt, claimed_by, started_at, absurd.current_time() from absurd.{}"
        " where state = 'running' and claimed_by like %s and claimed_by <> %s"
        " for update skip locked"
    ).format(runs)
    handed_back: list[OrphanedRun] = []
    async with conn.transaction():
        cur = await conn.execute(query, (escaped + "%", own_identity))
        candidates = [OrphanedRun(str(a), str(b), int(c), str(d), e, f) for a, b, c, d, e, f in await cur.fetchall()]
        for run in candidates:
            cur = await conn.execute("select pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (run.claimed_by,))
            row = await cur.fetchone()
            if not (row and row[0]):
                continue  # its worker is alive (it holds its lock), even if paused or slow
            await conn.execute("select absurd.schedule_run(%s, %s, absurd.current_time())", (queue_name, run.run_id))
            handed_back.append(run)
        if handed_back and record is not None:
            await record(conn, handed_back)
    return handed_back
