"""Worker settings and health."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._retry import RetryPolicy

DEFAULT_CONCURRENCY = 100
"""Tasks run at once per worker process. Agent runs mostly wait on models, and a waiting run holds no connection."""

DEFAULT_POOL_SIZE = 10
"""Connections of a worker's pool: every statement of the worker and of its runs borrows one for itself."""

DEFAULT_CLAIM_TIMEOUT = 10
"""Seconds a claim lasts without a heartbeat: how soon a task of a dead worker is picked up elsewhere.

A task of a worker that died (SIGKILL, OOM) is taken over by a live worker at its next poll, without
waiting for this lease (see fast takeover in the production docs); the lease is the fallback for lost
machines, network partitions and connection poolers in transaction mode.
"""

DEFAULT_DRAIN_TIMEOUT = 25.0
"""Seconds in-flight tasks get to finish after SIGTERM; below Kubernetes' default 30 s grace period."""

DEFAULT_POLL_INTERVAL = 0.5
"""Seconds between two claim attempts while the queue is empty."""

APPLICATION_NAME_PREFIX = "pydantic-ai-absurd worker "
"""Prefix of the `application_name` of worker connections (find them in `pg_stat_activity`)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of a `Worker` (all have production defaults).

    Attributes:
        concurrency: Tasks run at once. A run holds no connection: each of its statements (a checkpoint
            write, a heartbeat, a wait) borrows one from the worker's pool for that statement alone.
        pool_size: Largest number of connections of the worker's pool, shared by all its runs, its claims
            and its heartbeats (fast takeover holds its liveness lock on two more connections). See the
            sizing rule in the production docs.
        claim_timeout: Seconds of a claim (lease); extended every third of it while the task runs.
        drain_timeout: Seconds in-flight tasks get to finish after the first SIGTERM/SIGINT.
        poll_interval: Seconds between claims while the queue is empty.
        worker_id: Name of the worker in logs and in `claimed_by` (default `host:pid`); with fast
            takeover, runs are claimed as `pydantic-ai-absurd:<worker_id>:<random per process>`.
        dsn: Database to connect the pool to (default: where the client connects, else the
            `ABSURD_DATABASE_URL` resolution).
        queue: Queue to work (default: the client's queue).
        retry_policy: Backoff and non-retryable errors (see `RetryPolicy`).
        heartbeat: Keep the claim of every in-flight task alive while it runs (one statement every
            `claim_timeout / 3` extends the claims of all the worker's runs, and notices a cancelled task
            there). False: only the steps of durable agents and checkpoint writes extend it.
        fast_takeover: Hold a liveness lock and hand back the runs of dead workers of this package
            within a second (see the production docs); false: rely on leases alone.
        health_file: Path touched (mtime and a timestamp) after every successful poll; removed on stop.
        on_poll: Called after every successful poll with the worker's `WorkerHealth`.
        handle_signals: Install SIGTERM/SIGINT handlers while the worker runs.
        reconnect_max_delay: Largest backoff, in seconds, between two attempts to reach Postgres.
        connect_timeout: Seconds to wait for a connection (pool checkout and libpq connect).
    """

    concurrency: int = DEFAULT_CONCURRENCY
    pool_size: int = DEFAULT_POOL_SIZE
    claim_timeout: int = DEFAULT_CLAIM_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    worker_id: str | None = None
    dsn: str | None = None
    queue: str | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat: bool = True
    fast_takeover: bool = True
    health_file: str | os.PathLike[str] | None = None
    on_poll: Callable[[WorkerHealth], None] | None = None
    handle_signals: bool = True
    reconnect_max_delay: float = 10.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.pool_size < 2:
            raise ValueError("pool_size must be >= 2 (claims and runs share the pool)")
        if self.claim_timeout < 1:
            raise ValueError("claim_timeout must be >= 1 second")
        if self.drain_timeout < 0 or self.poll_interval <= 0:
            raise ValueError("drain_timeout must be >= 0 and poll_interval > 0")


@dataclass
class WorkerHealth:
    """Readiness and liveness of a running `Worker` (read `Worker.health`).

    Attributes:
        ready: The last claim attempt reached Postgres (false while reconnecting and once stopping).
        stopping: A stop was requested; no more claims.
        last_poll: `time.time()` of the last successful claim attempt (0 before the first).
        in_flight: Tasks running now.
        claimed, completed, suspended, retried, failed, handed_back: Counters since start.
        cancelled: Tasks stopped because they were cancelled (`absurd.cancel_task`).
        lost: Tasks stopped because their run was failed or handed back elsewhere.
        takeover_checks: Checks for runs of dead workers done since start.
        taken_over: Runs of dead workers this worker handed back (made claimable at once).
        fast_takeover: This worker holds its liveness lock (its liveness row behind a transaction pooler): its
            tasks are taken over soon after it dies.
    """

    ready: bool = False
    stopping: bool = False
    last_poll: float = 0.0
    in_flight: int = 0
    claimed: int = 0
    completed: int = 0
    suspended: int = 0
    retried: int = 0
    failed: int = 0
    handed_back: int = 0
    cancelled: int = 0
    lost: int = 0
    takeover_checks: int = 0
    taken_over: int = 0
    fast_takeover: bool = False

    def is_alive(self, max_age: float = 60.0) -> bool:
        """Whether the worker polled Postgres within `max_age` seconds (a liveness probe)."""
        return self.last_poll > 0 and time.time() - self.last_poll <= max_age
