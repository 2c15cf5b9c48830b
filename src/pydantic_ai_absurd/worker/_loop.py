"""A production worker on top of `absurd_sdk.AsyncAbsurd`.

Differences from `AsyncAbsurd.start_worker()`:

- **Slot refill.** A free slot is refilled as soon as one task finishes; Absurd's loop waits for a
  whole batch, so one slow agent run blocks claiming.
- **A connection per task.** Each in-flight task runs on its own connection from a
  `psycopg_pool.AsyncConnectionPool` (Absurd shares one connection between all tasks, so their
  checkpoint writes and heartbeats queue behind each other).
- **Short leases, kept alive.** Tasks are claimed for `claim_timeout` seconds (10 by default) and the
  worker extends the claim of every in-flight task every `claim_timeout / 3` seconds on a separate
  connection. A task whose worker dies (SIGKILL, OOM, lost node) is claimable again within
  `claim_timeout`; a live task keeps its claim whatever its steps do. The heartbeat also notices a
  cancelled task (or a run failed elsewhere) and stops its handler.
- **Graceful shutdown.** On SIGTERM/SIGINT the worker stops claiming, lets in-flight tasks finish for
  up to `drain_timeout` seconds, then cancels the rest and hands each run back with
  `absurd.schedule_run(queue, run_id, now)`: the run becomes claimable at once by another worker,
  without using an attempt, and resumes from its committed checkpoints (a completed step never runs
  twice; only the step that was in flight runs again). A second signal skips the rest of the drain.
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
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import psycopg
from absurd_sdk import AbsurdHooks, AsyncAbsurd, AsyncTaskContext, CancelledTask, ClaimedTask, FailedTask, SuspendTask
from psycopg_pool import AsyncConnectionPool

from .._absurd import (
    client_conninfo,
    client_hooks,
    client_queue_name,
    end_state_of,
    execute_claimed_task,
    extend_claim,
    is_registered,
    schedule_run_now,
)
from .._dsn import redact_dsn, resolve_dsn
from ..errors import PydanticAIAbsurdError, one_line
from ..schema import ensure_queue_exists
from ._config import (
    APPLICATION_NAME_PREFIX,
    DEFAULT_CLAIM_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    WorkerConfig,
    WorkerHealth,
)
from ._failure import record_task_failure
from ._retry import check_json_result

logger = logging.getLogger("pydantic_ai_absurd.worker")

_Outcome = Literal["completed", "suspended", "retry", "failed", "cancelled", "lost"]


class _ConnectionLost(BaseException):
    """The task's own connection broke; raised past the SDK's `except Exception` to hand the run back."""


@dataclass
class _Running:
    task: ClaimedTask
    outcome: _Outcome | None = None
    reason: str | None = None
    error: BaseException | None = None
    stop_reason: Literal["shutdown", "cancelled", "failed"] | None = None

    def describe(self) -> str:
        return f"task_id={self.task['task_id']} task={self.task['task_name']} attempt={self.task['attempt']}"


class Worker:
    """Runs the tasks registered on an `AsyncAbsurd` client; see the module docstring and `run_worker`."""

    def __init__(self, absurd: AsyncAbsurd, config: WorkerConfig | None = None) -> None:
        self.absurd = absurd
        self.config = config or WorkerConfig()
        self.queue = self.config.queue or client_queue_name(absurd)
        self.worker_id = self.config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.health = WorkerHealth()
        self._dsn = self.config.dsn or client_conninfo(absurd) or resolve_dsn(None)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._in_flight: dict[asyncio.Task[None], _Running] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._slot_freed = asyncio.Event()

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
        """Work the queue until `request_stop()` (or SIGTERM/SIGINT), then drain and hand back."""
        pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]](
            self._dsn,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(self.config.connect_timeout)),
                "application_name": f"{APPLICATION_NAME_PREFIX}{self.worker_id}"[:63],
            },
            min_size=1,
            max_size=self.config.concurrency + 3,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self.config.connect_timeout,
            name=f"pydantic-ai-absurd-worker-{self.queue}",
        )
        self._pool = pool
        await pool.open(wait=False)
        removers = self._install_signal_handlers()
        heartbeat = asyncio.ensure_future(self._heartbeat_loop()) if self.config.heartbeat else None
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
                await self._claim_loop()
            await self._drain()
        finally:
            if self._in_flight:  # run() itself was cancelled: hand everything back before closing the pool
                await self._cancel_in_flight("shutdown")
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            for remove in removers:
                remove()
            self._remove_health_file()
            await pool.close()
            self._pool = None
            logger.info("worker %s stopped", self.worker_id)

    # -- claiming ----------------------------------------------------------------------------

    async def _check_queue(self) -> bool:
        """Wait for Postgres, then fail fast if the schema or queue is missing. False if stopped meanwhile."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                async with self._connection() as conn:
                    await ensure_queue_exists(conn, self.queue)
                return True
            except PydanticAIAbsurdError:
                raise
            except (psycopg.Error, OSError) as err:
                logger.warning("cannot reach Postgres (%s); retrying in %.1fs", one_line(err, with_type=True), delay)
                await self._sleep_unless_stopped(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)
        return False

    async def _claim_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            free = self.config.concurrency - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await _wait_any(self._slot_freed, self._stop)
                continue
            try:
                async with self._connection() as conn:
                    claimer = AsyncAbsurd(conn, queue_name=self.queue)
                    tasks = await claimer.claim_tasks(
                        batch_size=free, claim_timeout=self.config.claim_timeout, worker_id=self.worker_id
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
                self._start(task)
            if len(tasks) < free:
                await self._sleep_unless_stopped(self.config.poll_interval)

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

    def _start(self, task: ClaimedTask) -> None:
        running = _Running(task)
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

    async def _execute(self, running: _Running) -> None:
        assert self._pool is not None
        task = running.task
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await self._pool.getconn()
            if not is_registered(self.absurd, task["task_name"]):
                logger.warning(
                    "no handler for %s on this worker; Absurd defers it by 15-30s (register the task on the worker)",
                    running.describe(),
                )
            await execute_claimed_task(
                self.absurd, conn, task, self.config.claim_timeout, self._hooks_for(running, conn)
            )
            self._log_outcome(running)
        except asyncio.CancelledError:
            if conn is not None:
                await conn.close()  # a query may have been cut short; never reuse this connection
            if running.stop_reason in ("cancelled", "failed"):
                logger.info("stopped %s: the run was %s elsewhere", running.describe(), running.stop_reason)
                return
            await self._hand_back(running, "worker shutting down")
            if running.stop_reason is None:
                raise
        except _ConnectionLost:
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

    def _hooks_for(self, running: _Running, conn: psycopg.AsyncConnection[Any]) -> AbsurdHooks:
        user_hooks = client_hooks(self.absurd)
        user_wrap = user_hooks.get("wrap_task_execution")
        policy = self.config.retry_policy
        task = running.task

        async def wrap(ctx: Any, execute: Callable[[], Awaitable[Any]]) -> Any:
            try:
                if user_wrap is not None:
                    result = user_wrap(cast("AsyncTaskContext", ctx), execute)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    result = await execute()
                check_json_result(task["task_name"], result)
            except SuspendTask:
                running.outcome = "suspended"
                raise
            except CancelledTask:
                running.outcome = "cancelled"
                raise
            except FailedTask:
                running.outcome = "lost"
                raise
            except Exception as err:
                if conn.broken or conn.closed:
                    raise _ConnectionLost() from err
                running.error = err
                try:
                    running.outcome, running.reason = await record_task_failure(conn, self.queue, task, err, policy)
                except psycopg.Error as db_err:
                    ended = end_state_of(db_err)
                    if ended == "cancelled":
                        running.outcome = "cancelled"
                        raise CancelledTask() from err
                    if ended == "failed":
                        running.outcome = "lost"
                        raise FailedTask() from err
                    if conn.broken or conn.closed:
                        raise _ConnectionLost() from err
                    raise
                raise FailedTask() from err  # the run is failed already; the SDK ignores FailedTask
            running.outcome = "completed"
            return result

        return {**user_hooks, "wrap_task_execution": wrap}

    def _log_outcome(self, running: _Running) -> None:
        what = running.describe()
        health = self.health
        match running.outcome:
            case "completed":
                health.completed += 1
                logger.info("completed %s", what)
            case "suspended":
                health.suspended += 1
                logger.info("suspended %s (sleeping or waiting for an event)", what)
            case "retry":
                health.retried += 1
                logger.warning("failed %s, will retry: %s", what, _describe_error(running.error))
            case "failed":
                health.failed += 1
                if running.reason is not None:
                    logger.error(
                        "failed %s for good (non-retryable: %s): %s",
                        what,
                        running.reason,
                        _describe_error(running.error),
                    )
                else:
                    logger.error("failed %s for good (attempts exhausted): %s", what, _describe_error(running.error))
            case "cancelled":
                logger.info("cancelled %s", what)
            case "lost":
                logger.warning("lost the claim of %s (its lease expired and the run was failed)", what)
            case None:
                pass  # unknown task deferred by Absurd, or a queue mismatch failed by it

    async def _hand_back(self, running: _Running, why: str) -> None:
        """Make the run claimable at once (`absurd.schedule_run(..., now)`), retrying while Postgres is away."""
        deadline = time.monotonic() + max(self.config.claim_timeout, 5)
        delay = 0.2
        while True:
            try:
                async with self._connection() as conn:
                    await schedule_run_now(conn, self.queue, running.task["run_id"])
            except psycopg.errors.RaiseException:
                logger.info("not handing back %s: the run is no longer running", running.describe())
                return
            except (psycopg.Error, OSError) as err:
                if time.monotonic() + delay > deadline:
                    logger.warning(
                        "could not hand back %s (%s); it is claimable again once its lease expires",
                        running.describe(),
                        one_line(err, with_type=True),
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.health.handed_back += 1
            logger.info("handed back %s because %s; it is claimable again at once", running.describe(), why)
            return

    # -- heartbeats and shutdown -------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(self.config.claim_timeout / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            jobs = [(job, running) for job, running in self._in_flight.items() if not job.done()]
            if not jobs:
                continue
            try:
                async with self._connection() as conn:
                    for job, running in jobs:
                        await self._extend(conn, job, running)
            except (psycopg.Error, OSError) as err:
                logger.debug("heartbeat failed: %s", one_line(err, with_type=True))

    async def _extend(self, conn: psycopg.AsyncConnection[Any], job: asyncio.Task[None], running: _Running) -> None:
        try:
            await extend_claim(conn, self.queue, running.task["run_id"], self.config.claim_timeout)
        except psycopg.Error as err:
            if conn.broken:
                raise
            ended = end_state_of(err)
            if ended is not None and not job.done():
                running.stop_reason = ended
                job.cancel()
            # Otherwise the run just left `running` (completed, suspended): nothing to extend.

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
        await self._cancel_in_flight("shutdown")

    async def _cancel_in_flight(self, reason: Literal["shutdown"]) -> None:
        pending = [job for job in self._in_flight if not job.done()]
        if not pending:
            return
        logger.warning("cancelling and handing back %d in-flight task(s)", len(pending))
        for job in pending:
            self._in_flight[job].stop_reason = reason
            job.cancel()
        await asyncio.wait(pending, timeout=max(self.config.claim_timeout, 5) + 5)

    # -- helpers -----------------------------------------------------------------------------

    def _connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        assert self._pool is not None
        return self._pool.connection(timeout=self.config.connect_timeout)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    def _install_signal_handlers(self) -> list[Callable[[], None]]:
        if not self.config.handle_signals:
            return []
        loop = asyncio.get_running_loop()
        removers: list[Callable[[], None]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not the main thread / Windows
                continue
            removers.append(functools.partial(_remove_signal_handler, loop, sig))
        return removers

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("received %s", sig.name)
        self.request_stop()

    def _remove_health_file(self) -> None:
        if self.config.health_file is not None:
            with contextlib.suppress(OSError):
                Path(self.config.health_file).unlink()


def _remove_signal_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    loop.remove_signal_handler(sig)


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _describe_error(err: BaseException | None) -> str:
    return "?" if err is None else one_line(err, with_type=True)


async def run_worker(
    absurd: AsyncAbsurd,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    claim_timeout: int = DEFAULT_CLAIM_TIMEOUT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    worker_id: str | None = None,
    config: WorkerConfig | None = None,
    **options: Any,
) -> None:
    """Run the tasks registered on `absurd` until SIGTERM/SIGINT, then drain and hand back the rest.

    Args:
        absurd: The client the task handlers are registered on (its queue is worked; its connection
            is not used for tasks: the worker opens a pool on the same database).
        concurrency: Tasks run at once, each on its own pooled connection.
        claim_timeout: Lease in seconds; the worker heartbeats every third of it.
        drain_timeout: Seconds in-flight tasks get to finish after SIGTERM before they are handed back.
        poll_interval: Seconds between claims while the queue is empty.
        worker_id: Recorded as `claimed_by` (default `host:pid`).
        config: A full `WorkerConfig`; the keyword arguments above override its fields.
        **options: Any other `WorkerConfig` field (`dsn`, `queue`, `retry_policy`, `health_file`, ...).
    """
    base = config or WorkerConfig()
    cfg = replace(
        base,
        concurrency=concurrency if concurrency != DEFAULT_CONCURRENCY else base.concurrency,
        claim_timeout=claim_timeout if claim_timeout != DEFAULT_CLAIM_TIMEOUT else base.claim_timeout,
        drain_timeout=drain_timeout if drain_timeout != DEFAULT_DRAIN_TIMEOUT else base.drain_timeout,
        poll_interval=poll_interval if poll_interval != DEFAULT_POLL_INTERVAL else base.poll_interval,
        worker_id=worker_id if worker_id is not None else base.worker_id,
        **options,
    )
    await Worker(absurd, cfg).run()
