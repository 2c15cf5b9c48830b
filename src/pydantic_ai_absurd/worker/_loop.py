"""A production worker on top of `absurd_sdk.AsyncAbsurd`.

Differences from `AsyncAbsurd.start_worker()`:

- **Slot refill.** A free slot is refilled as soon as one task finishes; Absurd's loop waits for a
  whole batch, so one slow agent run blocks claiming.
- **Connections follow writes, not runs.** A run holds no connection: each of its statements (checkpoint
  write, heartbeat, wait, completion) borrows one from the worker's pool of `pool_size` connections and
  gives it back at once (`_execute.py`, `_pool.py`), so `concurrency=100` runs waiting on models share 10
  connections. Absurd's own worker shares one connection between all tasks, so their writes queue behind
  each other.
- **Short leases, kept alive in bulk.** Tasks are claimed for `claim_timeout` seconds (10 by default) and
  each execution runs inside the engine's lease keeper (`LeaseKeeper.hold`); the keepers of all in-flight runs
  join the worker's bulk heartbeats (`_heartbeats.py`): one statement every `claim_timeout / 3` seconds
  extends every claim. When it reports a task cancelled (or its run failed elsewhere), that run's running
  step raises `CancelledTask` / `FailedTask`, and a handler outside any step is stopped. Claims fetch up
  to the free slots in one call, and reads the claimed runs' checkpoints in the same statement (the SDK's
  checkpoint preload at the start of each execution then sends none).
- **Fast takeover** (`_takeover.py`): a worker holds a liveness lock while it lives; every second,
  workers hand back the runs of dead workers of this package (SIGKILL, OOM) at once. A paused or slow
  worker keeps its tasks; lease expiry is the fallback for lost machines. Behind a transaction pooler
  the proof of life is a liveness row instead (`_liveness_rows.py`).
- **Graceful shutdown.** On SIGTERM/SIGINT the worker stops claiming, lets in-flight tasks finish for
  up to `drain_timeout` seconds, then cancels the rest and hands each run back with
  `absurd.schedule_run(queue, run_id, now)`: the run becomes claimable at once by another worker,
  without using an attempt, and resumes from its committed checkpoints (a completed step never runs
  twice; only the step that was in flight runs again). A second signal skips the rest of the drain.
- **Start-up check.** The private `absurd_sdk` names the package relies on are checked first; a
  missing one refuses to start with a one-line `IncompatibleSdkError`.
- **Reconnects.** Claiming retries with exponential backoff while Postgres is unreachable; the pool
  checks a connection that sat idle before lending it. A run whose statement loses its connection is
  handed back as soon as the database answers again (its neighbours, on other connections, go on), or
  else claimed again after its lease expires; no run stays `running`.
- **Retries for LLM work** (`RetryPolicy`, see `_retry.py`): exponential backoff by default and an
  immediate, recorded failure for errors that can never succeed.
- **Logs and health.** One log line (logger `pydantic_ai_absurd.worker`) per claim, completion,
  suspension, retry, failure and hand-back, with task id, task name and attempt; `Worker.health`
  and an optional health file touched after every successful poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import psycopg
from absurd_sdk import AsyncAbsurd, ClaimedTask
from pydantic_ai import Agent

from .. import _absurd
from .._absurd import (
    BorrowedConnection,
    Preloaded,
    claim_with_checkpoints,
    client_conninfo,
    client_hooks,
    client_queue_name,
)
from .._dsn import redact_dsn, resolve_dsn
from .._worker_records import record_worker_tasks
from ..errors import PydanticAIAbsurdError, one_line
from ..schema._install import ensure_queue_on
from ..telemetry import with_default_hooks
from ._config import APPLICATION_NAME_PREFIX, WorkerConfig, WorkerHealth
from ._drain import cancel_in_flight, drain
from ._execute import Executor
from ._handback import TAKEOVER_CHECK_INTERVAL, take_over_orphans
from ._heartbeats import BulkHeartbeats
from ._liveness_rows import RowLiveness
from ._pool import WorkerPool
from ._signals import install_signal_handlers, settled, wait_any
from ._takeover import Liveness, claim_guard, claim_identity, needs_claim_guard, start_liveness
from ._task import Running
from ._threads import WorkerThreads

logger = logging.getLogger("pydantic_ai_absurd.worker")


class Worker:
    """Runs the tasks registered on an `AsyncAbsurd` client; see the module docstring and `run_worker`."""

    def __init__(self, absurd: AsyncAbsurd, config: WorkerConfig | None = None) -> None:
        self.absurd = absurd
        self.config = config or WorkerConfig()
        self.queue = self.config.queue or client_queue_name(absurd)
        self.worker_id = self.config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.claim_id = claim_identity(self.worker_id)
        """`claimed_by` of this worker's runs while it holds its liveness lock (else `worker_id`)."""
        self.health = WorkerHealth()
        self.application_name = f"{APPLICATION_NAME_PREFIX}{self.worker_id}"[:56]
        """`application_name` of the worker's pooled connections (find them in `pg_stat_activity`)."""
        self._dsn = self.config.dsn or client_conninfo(absurd) or resolve_dsn(None)
        self._pool: WorkerPool | None = None
        self._executor: Executor | None = None
        self._claim_conn: psycopg.AsyncConnection[Any] | None = None
        """Claims on the pool, one statement each (a claim that holds a liveness row borrows a connection)."""
        self._liveness: Liveness | RowLiveness | None = None
        self._in_flight: dict[asyncio.Task[None], Running] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()

    # -- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming and drain (the first call); skip the rest of the drain (a second call)."""
        if not self._stop.is_set():
            logger.info(
                "stopping: no more claims; draining %d in-flight task(s) for up to %.1fs",
                len(self._in_flight),
                self.config.drain_timeout,
            )
            self.health.stopping = True
            self.health.ready = False
            self._stop.set()
            self._slot_freed.set()  # the claim loop waits on this one alone
            self._remove_health_file()
        elif not self._force.is_set():
            logger.warning("second stop request: handing back %d in-flight task(s) now", len(self._in_flight))
            self._force.set()

    async def run(self) -> None:
        """Work the queue until `request_stop()` (or SIGTERM/SIGINT), then drain and hand back.

        Raises `IncompatibleSdkError` before doing anything when the installed absurd-sdk lacks a private
        name this package relies on.
        """
        _absurd.check_private_names()
        executor = self._executor = self._build_executor()
        await executor.pool.open()
        removers = self._install_signal_handlers()
        background: asyncio.Task[None] | None = None
        logger.info(
            "worker %s starting on queue %s (%s): concurrency=%d claim_timeout=%ds drain_timeout=%.1fs pool_size=%d",
            self.worker_id,
            self.queue,
            redact_dsn(self._dsn),
            self.config.concurrency,
            self.config.claim_timeout,
            self.config.drain_timeout,
            self.config.pool_size,
        )
        try:
            # Every execution (an asyncio task started by the claim loop) inherits the executor of its sync calls.
            with Agent.using_thread_executor(WorkerThreads(executor.threads)):
                if await self._check_queue():
                    if self.config.fast_takeover:
                        background = await self._start_fast_takeover(f"{self.application_name} lock")
                    await self._claim_loop()
                await drain(self._in_flight, self.config.drain_timeout, self._force)
        finally:
            await self._shut_down(executor, background, removers)

    def _build_executor(self) -> Executor:
        config = self.config
        pool = self._pool = WorkerPool(
            self._dsn,
            size=config.pool_size,
            application_name=self.application_name,
            connect_timeout=config.connect_timeout,
            name=f"pydantic-ai-absurd-worker-{self.queue}",
        )
        self._claim_conn = cast(Any, BorrowedConnection(pool.connection, self._dsn, lender=pool))
        threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(40, 4 * config.concurrency), thread_name_prefix="pydantic-ai-absurd-worker"
        )
        return Executor(
            absurd=self.absurd,
            pool=pool,
            dsn=self._dsn,
            queue=self.queue,
            config=config,
            health=self.health,
            hooks=with_default_hooks(client_hooks(self.absurd)),  # OpenTelemetry trace context (telemetry.py)
            heartbeats=BulkHeartbeats(pool.connection, self.queue, config.claim_timeout),
            threads=threads,
        )

    async def _start_fast_takeover(self, application_name: str) -> asyncio.Task[None]:
        """Hold the liveness lock and start the loop that takes over dead workers' runs."""
        connect_timeout = max(1, round(self.config.connect_timeout))
        self._liveness = await start_liveness(
            self._dsn,
            self.worker_id,
            self.queue,
            connect_timeout=connect_timeout,
            application_name=application_name,
            on_lost=self._drop_runs_of,
        )
        self.claim_id = self._liveness.identity  # a lock identity, or a row identity behind a pooler
        self.health.fast_takeover = self._liveness.enabled
        return asyncio.ensure_future(self._takeover_loop())

    async def _shut_down(
        self, executor: Executor, background: asyncio.Task[None] | None, removers: list[Callable[[], None]]
    ) -> None:
        if self._in_flight:  # run() itself was cancelled: hand everything back before closing the pool
            await cancel_in_flight(self._in_flight, self._force)
        if background is not None:
            background.cancel()
            await settled(asyncio.wait({background}), "the takeover loop")
        for remove in removers:
            remove()
        self._remove_health_file()
        await executor.heartbeats.close()
        await settled(executor.pool.close(), "closing the connection pool")
        self._pool = None
        executor.threads.shutdown(wait=False)
        if self._liveness is not None:
            await settled(self._liveness.close(), "releasing the liveness lock")
            self._liveness = None
        logger.info("worker %s stopped", self.worker_id)

    # -- claiming ----------------------------------------------------------------------------

    async def _check_queue(self) -> bool:
        """Wait for Postgres, then fail fast if the schema or queue is missing. False if stopped meanwhile."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                async with self._connection() as conn:
                    await ensure_queue_on(conn, self.queue, redact_dsn(self._dsn))
                    await record_worker_tasks(conn, self.queue, self.absurd, self.worker_id)
                return True
            except PydanticAIAbsurdError:
                raise
            except (psycopg.Error, OSError) as err:
                logger.warning("cannot reach Postgres (%s); retrying in %.1fs", one_line(err, with_type=True), delay)
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)
        return False

    async def _claimed_by(self) -> str:
        """The marked identity while the liveness lock is held (checked now), else the plain worker id."""
        liveness = self._liveness
        if liveness is not None and liveness.enabled and await liveness.check() > 0:
            return liveness.identity
        return self.worker_id

    async def _claim_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            free = self.config.concurrency - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()  # set when a run ends, and on stop
                continue
            self._wake.clear()
            try:
                tasks, claimed_by = await self._claim(free)
            except (psycopg.Error, OSError) as err:
                self.health.ready = False
                logger.warning(
                    "cannot claim from queue %s (%s); retrying in %.1fs",
                    self.queue,
                    one_line(err, with_type=True),
                    delay,
                )
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)
                continue
            if delay > 0.5:
                logger.info("reconnected to Postgres; claiming from queue %s again", self.queue)
            delay = 0.5
            self._polled()
            for task, preloaded in tasks:
                self._start(task, claimed_by, preloaded)
            if len(tasks) < free:
                await self._sleep_unless_stopped(self.config.poll_interval, wake=True)

    async def _claim(self, free: int) -> tuple[list[tuple[ClaimedTask, Preloaded]], str]:
        """Claim up to `free` runs in one call; also returns the identity they were claimed in."""
        claimed_by = await self._claimed_by()
        timeout = self.config.claim_timeout
        if self._claim_conn is not None and not needs_claim_guard(self._liveness, claimed_by):
            return await claim_with_checkpoints(self._claim_conn, self.queue, claimed_by, timeout, free), claimed_by
        async with self._connection() as conn, claim_guard(self._liveness, conn, claimed_by) as allowed:
            if not allowed:  # peers presumed this worker dead a moment ago (_takeover.claim_guard)
                return [], claimed_by
            return await claim_with_checkpoints(conn, self.queue, claimed_by, timeout, free), claimed_by

    async def _takeover_loop(self) -> None:
        """Keep the liveness lock (checked every poll interval) and hand back the runs of dead workers.

        The lock check sends no statement (`Liveness.check`); the takeover check, one statement every
        `TAKEOVER_CHECK_INTERVAL` seconds when no peer died (`take_over_orphans`).
        """
        assert self._liveness is not None
        next_takeover = time.monotonic() + TAKEOVER_CHECK_INTERVAL
        while True:
            await asyncio.sleep(min(self.config.poll_interval, TAKEOVER_CHECK_INTERVAL))
            await self._liveness.check()
            if time.monotonic() < next_takeover:
                continue
            next_takeover = time.monotonic() + TAKEOVER_CHECK_INTERVAL
            if await take_over_orphans(self._connection, self.queue, self._liveness.identity, self.health):
                self._wake.set()  # claim them now rather than at the next poll

    def _polled(self) -> None:
        health = self.health
        health.ready = not health.stopping
        health.last_poll = time.time()
        if self.config.health_file is not None and not health.stopping:
            try:
                Path(self.config.health_file).write_text(f"{health.last_poll:.3f}\n")
            except OSError as err:  # pragma: no cover - depends on the file system
                logger.warning("cannot write health file %s: %s", self.config.health_file, err)
        if self.config.on_poll is not None:
            self.config.on_poll(health)

    def _start(self, task: ClaimedTask, claimed_by: str | None = None, preloaded: Preloaded | None = None) -> None:
        assert self._executor is not None
        running = Running(task, claimed_by=claimed_by, preloaded=preloaded)
        self.health.claimed += 1
        logger.info("claimed %s run_id=%s", running, task["run_id"])
        job = asyncio.ensure_future(self._executor.execute(running))
        self._in_flight[job] = running
        self.health.in_flight = len(self._in_flight)
        job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Future[None]) -> None:
        self._in_flight.pop(cast("asyncio.Task[None]", job), None)
        self.health.in_flight = len(self._in_flight)
        self._slot_freed.set()

    def _drop_runs_of(self, identity: str) -> None:
        """Stop, without handing back, the runs claimed in `identity`: peers presumed this worker dead."""
        for job, running in self._in_flight.items():
            if running.claimed_by == identity and not job.done():
                logger.warning(
                    "dropping %s: this worker was presumed dead and a peer took the run over", running.describe()
                )
                running.stop_reason = "presumed_dead"
                running.dropped = True
                job.cancel()

    # -- helpers -----------------------------------------------------------------------------

    def _connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        assert self._pool is not None
        return self._pool.connection()

    async def _sleep_unless_stopped(self, seconds: float, *, wake: bool = False) -> None:
        events = (self._stop, self._wake) if wake else (self._stop,)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_any(*events), timeout=seconds)

    def _install_signal_handlers(self) -> list[Callable[[], None]]:
        return install_signal_handlers(self._on_signal) if self.config.handle_signals else []

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("received %s", sig.name)
        self.request_stop()

    def _remove_health_file(self) -> None:
        if self.config.health_file is not None:
            with contextlib.suppress(OSError):
                Path(self.config.health_file).unlink()
