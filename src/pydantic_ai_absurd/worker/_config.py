"""Worker settings and health."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._retry import RetryPolicy

DEFAULT_CONCURRENCY = 10
"""Tasks run at once per worker process. Agent tasks mostly wait on the network, so more than one per CPU."""

DEFAULT_CLAIM_TIMEOUT = 10
"""Seconds a claim lasts without a heartbeat: how soon a task of a dead worker is picked up elsewhere.

Recovery after a SIGKILL takes about `claim_timeout` + `poll_interval` + the remaining work (every
checkpoint write extends the claim to a full `claim_timeout`), so 10 s keeps it under 15 s.
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
        concurrency: Tasks run at once; each holds one pooled connection while it runs.
        claim_timeout: Seconds of a claim (lease); extended every third of it while the task runs.
        drain_timeout: Seconds in-flight tasks get to finish after the first SIGTERM/SIGINT.
        poll_interval: Seconds between claims while the queue is empty.
        worker_id: Name recorded as `claimed_by` (default `host:pid`).
        dsn: Database to connect the pool to (default: where the client connects, else the
            `ABSURD_DATABASE_URL` resolution).
        queue: Queue to work (default: the client's queue).
        retry_policy: Backoff and non-retryable errors (see `RetryPolicy`).
        heartbeat: Extend claims of in-flight tasks from the worker (recommended with short leases).
        health_file: Path touched (mtime and a timestamp) after every successful poll; removed on stop.
        on_poll: Called after every successful poll with the worker's `WorkerHealth`.
        handle_signals: Install SIGTERM/SIGINT handlers while the worker runs.
        reconnect_max_delay: Largest backoff, in seconds, between two attempts to reach Postgres.
        connect_timeout: Seconds to wait for a connection (pool checkout and libpq connect).
    """

    concurrency: int = DEFAULT_CONCURRENCY
    claim_timeout: int = DEFAULT_CLAIM_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    poll_interval: float = DEFAULT_POLL_INTERVAL
    worker_id: str | None = None
    dsn: str | None = None
    queue: str | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat: bool = True
    health_file: str | os.PathLike[str] | None = None
    on_poll: Callable[[WorkerHealth], None] | None = None
    handle_signals: bool = True
    reconnect_max_delay: float = 10.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
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

    def is_alive(self, max_age: float = 60.0) -> bool:
        """Whether the worker polled Postgres within `max_age` seconds (a liveness probe)."""
        return self.last_poll > 0 and time.time() - self.last_poll <= max_age
