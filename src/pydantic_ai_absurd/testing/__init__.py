"""Helpers for testing code that uses Absurd (also re-exported by the pytest plugin)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from absurd_sdk import AsyncAbsurd

from .._absurd import execute_task

if TYPE_CHECKING:
    from ._replays import assert_replays

__all__ = ["assert_replays", "run_queued"]


def __getattr__(name: str) -> Any:
    # `assert_replays` imports the engine (Pydantic AI); loading the pytest plugin must not.
    if name == "assert_replays":
        from ._replays import assert_replays

        return assert_replays
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def run_queued(
    absurd: AsyncAbsurd, *, claim_timeout: int = 60, max_rounds: int = 100, batch_size: int = 10
) -> int:
    """Run the client's queue until no task is runnable now; return how many task runs were executed.

    Each round claims up to `batch_size` runnable runs (`absurd.claim_task`) and executes them
    one after the other with the client's registered handlers, exactly as `work_batch` does.
    Runs that suspend (`sleep_for` into the future, `await_event` without the event) are not
    runnable until woken, so they end the loop instead of spinning. `max_rounds` bounds tasks that
    keep rescheduling themselves for "now"; after it the count so far is returned.
    """
    executed = 0
    for _ in range(max_rounds):
        tasks = await absurd.claim_tasks(batch_size=batch_size, claim_timeout=claim_timeout, worker_id="run_queued")
        if not tasks:
            break
        for task in tasks:
            # The SDK's own per-task executor (what work_batch / start_worker call): public
            # work_batch cannot tell us whether it claimed anything.
            await execute_task(absurd, task, claim_timeout)
            executed += 1
    return executed
