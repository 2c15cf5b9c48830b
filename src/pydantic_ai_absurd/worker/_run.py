"""`run_worker`: run a `Worker` with keyword arguments over a `WorkerConfig`."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from absurd_sdk import AsyncAbsurd

from ._config import WorkerConfig
from ._loop import Worker

__all__ = ["run_worker"]

_CONFIG_FIELDS = frozenset(f.name for f in fields(WorkerConfig))


async def run_worker(
    absurd: AsyncAbsurd,
    *,
    concurrency: int | None = None,
    claim_timeout: int | None = None,
    drain_timeout: float | None = None,
    poll_interval: float | None = None,
    worker_id: str | None = None,
    queue: str | None = None,
    config: WorkerConfig | None = None,
    **options: Any,
) -> None:
    """Run the tasks registered on `absurd` until SIGTERM/SIGINT, then drain and hand back the rest.

    Args:
        absurd: The client the task handlers are registered on (its queue is worked unless `queue` is
            given; its connection is not used for tasks: the worker opens a pool on the same database).
        concurrency: Tasks run at once (default 100); they share the worker's pool of `pool_size` connections.
        claim_timeout: Lease in seconds (default 10); the lease keeper heartbeats every third of it.
        drain_timeout: Seconds in-flight tasks get to finish after SIGTERM before they are handed back.
        poll_interval: Seconds between claims while the queue is empty (default 0.5).
        worker_id: Recorded in `claimed_by` (default `host:pid`).
        queue: Queue to work (default: the client's queue).
        config: A full `WorkerConfig`. Every keyword argument given explicitly (here or in `**options`)
            overrides its field; the ones left out keep `config`'s values.
        **options: Any other `WorkerConfig` field (`dsn`, `retry_policy`, `health_file`, ...).
    """
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"run_worker() got unexpected keyword argument(s): {', '.join(unknown)}")
    given = {
        "concurrency": concurrency,
        "claim_timeout": claim_timeout,
        "drain_timeout": drain_timeout,
        "poll_interval": poll_interval,
        "worker_id": worker_id,
        "queue": queue,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    cfg = replace(config or WorkerConfig(), **overrides, **options)
    await Worker(absurd, cfg).run()
