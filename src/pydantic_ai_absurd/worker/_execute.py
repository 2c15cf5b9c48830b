"""Executing one claimed run on a worker: its connection stand-in, its hooks, its outcome or hand-back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from absurd_sdk import AbsurdHooks, AsyncAbsurd

from .._absurd import BorrowedConnection, client_queue_name, execute_claimed_task, registered_queue
from ..errors import one_line
from ._config import WorkerConfig, WorkerHealth
from ._handback import hand_back_run
from ._heartbeats import BulkHeartbeats
from ._pool import WorkerPool
from ._task import ConnectionLost, Running, log_outcome, wrap_execution
from ._threads import TaskThreads

__all__ = ["Executor"]

logger = logging.getLogger("pydantic_ai_absurd.worker")


@dataclass
class Executor:
    """What every run of one worker shares: the client, the pool, the bulk heartbeats, the thread pool."""

    absurd: AsyncAbsurd
    pool: WorkerPool
    dsn: str
    queue: str
    config: WorkerConfig
    health: WorkerHealth
    hooks: AbsurdHooks
    """The user's hooks with the default ones (OpenTelemetry trace context), computed once per worker."""
    heartbeats: BulkHeartbeats
    threads: concurrent.futures.ThreadPoolExecutor
    _runnable: set[str] = field(default_factory=lambda: set(), init=False)
    """Task names registered for this worker's queue (checked once each)."""

    async def execute(self, running: Running) -> None:
        """Run one claimed task to its end (or hand it back); never raises but for the worker's cancellation.

        The run has no connection of its own: each statement of it borrows one from the pool
        (`BorrowedConnection`), so a model call or a tool body holds none.
        """
        conn = BorrowedConnection(self.pool.connection, self.dsn, lender=self.pool, preloaded=running.preloaded)
        running.preloaded = None  # the connection answers the preload once
        run_id = str(running.task["run_id"])
        if running.claimed_by is not None:
            self.heartbeats.claims[run_id] = running.claimed_by
        threads = TaskThreads()
        threads.enter()  # this asyncio task's context: the worker's `WorkerThreads` tracks its sync calls here
        try:
            self._warn_if_unrunnable(running)
            hooks = wrap_execution(
                running,
                conn,
                self.queue,
                self.hooks,
                self.config.retry_policy,
                heartbeat=self.config.heartbeat,
                threads=threads,
                heartbeats=self.heartbeats,
            )
            as_connection: Any = conn  # what the SDK does with it, a `BorrowedConnection` does (_borrowed.py)
            await execute_claimed_task(
                self.absurd,
                as_connection,
                running.task,
                self.config.claim_timeout,
                hooks,
                queue_name=self.queue,
            )
            log_outcome(running, self.health)
        except asyncio.CancelledError:
            if running.dropped:  # a peer handed it back already (_liveness_rows.py): it may run there now
                return
            await self.hand_back(running, "worker shutting down")
            if running.stop_reason is None:
                raise
        except ConnectionLost:
            await self.hand_back(running, "its database connection was lost")
        except (psycopg.Error, OSError) as err:
            if conn.broken:
                logger.warning(
                    "database connection lost while running %s: %s", running.describe(), one_line(err, with_type=True)
                )
                await self.hand_back(running, "its database connection was lost")
            else:
                logger.exception("error outside the handler of %s; its lease will expire", running.describe())
        except Exception:
            logger.exception("error outside the handler of %s; its lease will expire", running.describe())
        finally:
            self.heartbeats.claims.pop(run_id, None)

    def _warn_if_unrunnable(self, running: Running) -> None:
        name = running.task["task_name"]
        if name in self._runnable:
            return
        queue = registered_queue(self.absurd, name)
        if queue in (self.queue, client_queue_name(self.absurd)):
            self._runnable.add(name)
        elif queue is None:
            logger.warning(
                "no handler for %s on this worker; Absurd defers it by 15-30s (register the task on the worker)",
                running.describe(),
            )
        else:
            logger.error(
                "%s is registered for queue %s but this worker works queue %s; Absurd fails the run as "
                "misconfigured (register it without a queue, or for queue %s)",
                running.describe(),
                queue,
                self.queue,
                self.queue,
            )

    async def hand_back(self, running: Running, why: str) -> None:
        """Make the run claimable at once elsewhere (retrying while Postgres is away)."""
        patience = max(self.config.claim_timeout, 5)
        if await hand_back_run(
            self.pool.connection, self.queue, running.task["run_id"], running.describe(), why, patience=patience
        ):
            self.health.handed_back += 1
