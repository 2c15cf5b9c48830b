"""Handing runs back: our own on shutdown or a lost connection, and those of dead workers (fast takeover)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from .._absurd import (
    OrphanedRun,
    hand_back_orphaned_runs,
    hand_back_runs_of_stale_workers,
    schedule_run_now,
    takeover_candidates,
)
from .._worker_records import record_lost_executions
from ..errors import one_line
from ._config import WorkerHealth
from ._liveness_rows import ROW_CLAIM_PREFIX, STALE_AFTER
from ._takeover import CLAIM_PREFIX

__all__ = ["TAKEOVER_CHECK_INTERVAL", "hand_back_run", "take_over_orphans"]

logger = logging.getLogger("pydantic_ai_absurd.worker")

TAKEOVER_CHECK_INTERVAL = 1.0
"""Seconds between two takeover checks of a worker (one statement each while no peer died)."""

CLAIM_FAMILY = "pydantic-ai-absurd"
"""What `CLAIM_PREFIX` and `ROW_CLAIM_PREFIX` start with: the claims of this package's workers with fast takeover."""

ConnectionFactory = Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


async def hand_back_run(
    connection: ConnectionFactory, queue: str, run_id: str, what: str, why: str, *, patience: float
) -> bool:
    """Make the run claimable at once (`absurd.schedule_run(..., now)`), retrying while Postgres is away.

    Gives up after `patience` seconds (the run is then claimable again once its lease expires). Returns
    whether the run was handed back.
    """
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            async with connection() as conn:
                await schedule_run_now(conn, queue, run_id)
        except psycopg.errors.RaiseException:
            logger.info("not handing back %s: the run is no longer running", what)
            return False
        except (psycopg.Error, OSError) as err:
            if time.monotonic() + delay > deadline:
                logger.warning(
                    "could not hand back %s (%s); it is claimable again once its lease expires",
                    what,
                    one_line(err, with_type=True),
                )
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        logger.info("handed back %s because %s; it is claimable again at once", what, why)
        return True


async def take_over_orphans(connection: ConnectionFactory, queue: str, identity: str, health: WorkerHealth) -> int:
    """Hand back the running runs of `queue` whose worker (one of this package's) is dead; return how many.

    One statement when no other worker of this package has a running run, or all of those hold their lock
    (`takeover_candidates`); a transaction only to hand runs back, or to check liveness rows. Never raises
    on a database error (the next check tries again).
    """

    async def record(conn: psycopg.AsyncConnection[Any], runs: list[OrphanedRun]) -> None:
        await record_lost_executions(conn, queue, runs, identity)

    try:
        async with connection() as conn:
            rows = await _take_over(conn, queue, identity, record)
    except (psycopg.Error, OSError) as err:
        logger.debug("takeover check failed: %s", one_line(err, with_type=True))
        return 0
    finally:
        health.takeover_checks += 1
    for run in rows:
        health.taken_over += 1
        logger.info(
            "took over task_id=%s run_id=%s: its worker %s is gone (no liveness lock or row); claimable again at once",
            run.task_id,
            run.run_id,
            run.claimed_by,
        )
    return len(rows)


async def _take_over(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    identity: str,
    record: Callable[[psycopg.AsyncConnection[Any], list[OrphanedRun]], Awaitable[None]],
) -> list[OrphanedRun]:
    candidates = await takeover_candidates(conn, queue, CLAIM_FAMILY, CLAIM_PREFIX, identity)
    dead_locks = [claimed_by for claimed_by, dead in candidates if dead]
    rows = await hand_back_orphaned_runs(conn, queue, dead_locks, record) if dead_locks else []
    if any(claimed_by.startswith(ROW_CLAIM_PREFIX) for claimed_by, _ in candidates):
        # Workers behind a transaction pooler prove liveness with a row instead of a lock (migration 007;
        # a database migrated before it has no such worker).
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            rows += await hand_back_runs_of_stale_workers(conn, queue, ROW_CLAIM_PREFIX, identity, STALE_AFTER, record)
    return rows
