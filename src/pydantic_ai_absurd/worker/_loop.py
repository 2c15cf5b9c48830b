"""A production worker on top of `absurd_sdk.AsyncAbsurd`.

Differences from `AsyncAbsurd.start_worker()`:

- **Slot refill.** A free slot is refilled as soon as one task finishes; Absurd's loop waits for a
  whole batch, so one slow agent run blocks claiming.
- **A connection per task.** Each in-flight task runs on its own connection from a
  `psycopg_pool.AsyncConnectionPool` (Absurd shares one connection between all tasks, so their
  checkpoint writes and heartbeats queue behind each other).
- **Short leases, kept alive by one component.** Tasks are claimed for `claim_timeout` seconds (10 by
  default) and each execution runs inside the engine's lease keeper (`keep_lease`), which heartbeats on
  the task's own connection every `claim_timeout / 3` seconds. When a heartbeat reports the task
  cancelled (or its run failed elsewhere), a running step raises `CancelledTask` / `FailedTask`, and a
  handler outside any step is stopped.
- **Fast takeover** (`_takeover.py`): a worker holds a liveness lock while it lives; at every poll,
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
  checks connections before handing them out. A task whose connection dies is handed back as soon as
  the database answers again, or else claimed again after its lease expires; no run stays `running`.
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
from psycopg_pool import AsyncConnectionPool

from .. import _absurd
from .._absurd import client_conninfo, client_hooks, client_queue_name, execute_claimed_task, registered_queue
from .._db import connection_pool
from .._dsn import redact_dsn, resolve_dsn
from .._worker_records import record_worker_tasks
from ..errors import PydanticAIAbsurdError, one_line
from ..schema._install import ensure_queue_on
from ..telemetry import with_default_hooks
from ._config import APPLICATION_NAME_PREFIX, WorkerConfig, WorkerHealth
from ._handback import hand_back_run, take_over_orphans
from ._liveness_rows import RowLiveness
from ._signals import install_signal_handlers, settled, wait_any
from ._takeover import Liveness, claim_guard, claim_identity, start_liveness
from ._task import ConnectionLost, Running, log_outcome, wrap_execution
from ._threads import TaskThreads

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
        self._dsn = self.config.dsn or client_conninfo(absurd) or resolve_dsn(None)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._liveness: Liveness | RowLiveness | None = None
        self._in_flight: dict[asyncio.Task[None], Running] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

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
        application_name = f"{APPLICATION_NAME_PREFIX}{self.worker_id}"[:56]
        connect_timeout = max(1, round(self.config.connect_timeout))
        pool = connection_pool(
            self._dsn,
            max_size=self.config.concurrency + 3,
            application_name=application_name,
            connect_timeout=connect_timeout,
            timeout=self.config.connect_timeout,
            check=True,
            name=f"pydantic-ai-absurd-worker-{self.queue}",
        )
        self._pool = pool
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(40, 4 * self.config.concurrency), thread_name_prefix="pydantic-ai-absurd-worker"
        )
        await pool.open(wait=False)
        removers = self._install_signal_handlers()
        background: asyncio.Task[None] | None = None
        logger.info(
            "worker %s starting on queue %s (%s): concurrency=%d claim_timeout=%ds drain_timeout=%.1fs",
            self.worker_id,
            self.queue,
            redact_dsn(self._dsn),
            self.config.concurrency,
            self.config.claim_timeout,
            self.config.drain_timeout,
        )
        try:
            if await self._check_queue():
                if self.config.fast_takeover:
                    background = await self._start_fast_takeover(connect_timeout, f"{application_name} lock")
                await self._claim_loop()
            await self._drain()
        finally:
            await self._shut_down(pool, background, removers)

    async def _start_fast_takeover(self, connect_timeout: int, application_name: str) -> asyncio.Task[None]:
        """Hold the liveness lock and start the loop that takes over dead workers' runs."""
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
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        background: asyncio.Task[None] | None,
        removers: list[Callable[[], None]],
    ) -> None:
        if self._in_flight:  # run() itself was cancelled: hand everything back before closing the pool
            await self._cancel_in_flight()
        if background is not None:
            background.cancel()
            await settled(asyncio.wait({background}), "the takeover loop")
        for remove in removers:
            remove()
        self._remove_health_file()
        await settled(pool.close(), "closing the connection pool")
        self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=False)
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
                await wait_any(self._slot_freed, self._stop)
                continue
            self._wake.clear()
            claimed_by = await self._claimed_by()
            try:
                async with self._connection() as conn, claim_guard(self._liveness, conn, claimed_by) as allowed:
                    claimer = AsyncAbsurd(conn, queue_name=self.queue)
                    tasks = (
                        await claimer.claim_tasks(
                            batch_size=free, claim_timeout=self.config.claim_timeout, worker_id=claimed_by
                        )
                        if allowed  # False: peers presumed this worker dead a moment ago (_takeover.claim_guard)
                        else []
                    )
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
            for task in tasks:
                self._start(task, claimed_by)
            if len(tasks) < free:
                await self._sleep_unless_stopped(self.config.poll_interval, wake=True)

    async def _takeover_loop(self) -> None:
        """Every poll interval: keep the liveness lock, and hand back the runs of dead workers."""
        assert self._liveness is not None
        while True:
            await asyncio.sleep(self.config.poll_interval)
            await self._liveness.check()
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

    def _start(self, task: ClaimedTask, claimed_by: str | None = None) -> None:
        running = Running(task, claimed_by=claimed_by)
        self.health.claimed += 1
        logger.info("claimed %s run_id=%s", running.describe(), task["run_id"])
        job = asyncio.ensure_future(self._execute(running))
        self._in_flight[job] = running
        self.health.in_flight = len(self._in_flight)

        def done(finished: asyncio.Future[None]) -> None:
            self._in_flight.pop(cast("asyncio.Task[None]", finished), None)
            self.health.in_flight = len(self._in_flight)
            self._slot_freed.set()

        job.add_done_callback(done)

    # -- executing ---------------------------------------------------------------------------

    async def _execute(self, running: Running) -> None:
        assert self._pool is not None and self._threads is not None
        task = running.task
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await self._pool.getconn()
            self._warn_if_unrunnable(running)
            hooks = wrap_execution(
                running,
                conn,
                self.queue,
                with_default_hooks(client_hooks(self.absurd)),  # OpenTelemetry trace context (telemetry.py)
                self.config.retry_policy,
                heartbeat=self.config.heartbeat,
                threads=TaskThreads(self._threads),
            )
            await execute_claimed_task(self.absurd, conn, task, self.config.claim_timeout, hooks, queue_name=self.queue)
            log_outcome(running, self.health)
        except asyncio.CancelledError:
            if conn is not None:
                await conn.close()  # a query may have been cut short; never reuse this connection
            if running.dropped:  # a peer handed it back already (_liveness_rows.py): it may run there now
                return
            await self._hand_back(running, "worker shutting down")
            if running.stop_reason is None:
                raise
        except ConnectionLost:
            await self._hand_back(running, "its database connection was lost")
        except (psycopg.Error, OSError) as err:
            if conn is None or conn.broken or conn.closed:
                logger.warning(
                    "database connection lost while running %s: %s", running.describe(), one_line(err, with_type=True)
                )
                await self._hand_back(running, "its database connection was lost")
            else:
                logger.exception("error outside the handler of %s; its lease will expire", running.describe())
        except Exception:
            logger.exception("error outside the handler of %s; its lease will expire", running.describe())
        finally:
            if conn is not None:
                await self._pool.putconn(conn)

    def _warn_if_unrunnable(self, running: Running) -> None:
        name = running.task["task_name"]
        queue = registered_queue(self.absurd, name)
        if queue is None:
            logger.warning(
                "no handler for %s on this worker; Absurd defers it by 15-30s (register the task on the worker)",
                running.describe(),
            )
        elif queue not in (self.queue, client_queue_name(self.absurd)):
            logger.error(
                "%s is registered for queue %s but this worker works queue %s; Absurd fails the run as "
                "misconfigured (register it without a queue, or for queue %s)",
                running.describe(),
                queue,
                self.queue,
                self.queue,
            )

    async def _hand_back(self, running: Running, why: str) -> None:
        patience = max(self.config.claim_timeout, 5)
        if await hand_back_run(
            self._connection, self.queue, running.task["run_id"], running.describe(), why, patience=patience
        ):
            self.health.handed_back += 1

    # -- shutdown ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait for in-flight tasks until they finish, `drain_timeout` passes or a second stop request."""
        deadline = time.monotonic() + self.config.drain_timeout
        force = asyncio.ensure_future(self._force.wait())
        try:
            while True:
                pending = {job for job in self._in_flight if not job.done()}
                remaining = deadline - time.monotonic()
                if not pending or force.done() or remaining <= 0:
                    break
                await asyncio.wait({*pending, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
        await self._cancel_in_flight()

    async def _cancel_in_flight(self) -> None:
        """Cancel the in-flight tasks and wait until each has stopped and handed its run back.

        A step body is cancelled and awaited before its task hands the run back, so no body of this
        worker still runs when another worker starts the same step. A synchronous tool running in a
        thread cannot be interrupted: its task waits for it (its lease kept alive meanwhile) until it
        returns, or until a second stop request.
        """
        pending = [job for job in self._in_flight if not job.done()]
        if not pending:
            return
        logger.warning("cancelling and handing back %d in-flight task(s)", len(pending))
        for job in pending:
            self._in_flight[job].stop_reason = "shutdown"
            job.cancel()
        force = asyncio.ensure_future(self._force.wait())
        try:
            while not force.done() and any(not job.done() for job in pending):
                await asyncio.wait({*pending, force}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()

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
        return self._pool.connection(timeout=self.config.connect_timeout)

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
