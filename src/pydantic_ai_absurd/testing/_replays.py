"""`assert_replays`: fail a test when recorded tasks no longer replay on the code under test."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator, Iterable, Mapping
from os import PathLike
from typing import Any

from absurd_sdk import AsyncAbsurd

from .._absurd import registered_handlers
from ..verify import Handler, RecordedTask, VerifyReport, import_recorded, replay_recorded

__all__ = ["ReplayReport", "assert_replays"]


class ReplayReport(VerifyReport):
    """The report of `assert_replays`; awaiting it returns it, so `await assert_replays(...)` works too."""

    def __await__(self) -> Generator[Any, None, ReplayReport]:
        return self
        yield  # pragma: no cover - makes this a generator


def assert_replays(
    absurd_or_handlers: AsyncAbsurd | Mapping[str, Handler],
    file_or_records: str | PathLike[str] | Iterable[RecordedTask],
) -> ReplayReport:
    """Assert that recorded tasks (a `verify --export` file, or `RecordedTask`s) replay on the current code.

    `absurd_or_handlers` is the app's `AsyncAbsurd` client (its registered handlers are used) or a mapping
    of task name to handler. Nothing is executed and no database is used. Raises `AssertionError` with one
    line per task that diverged; returns the report. Callable from sync and async tests alike (in an async
    test it runs on a helper thread; `await assert_replays(...)` is accepted).
    """
    handlers: Mapping[str, Handler] = (
        registered_handlers(absurd_or_handlers) if isinstance(absurd_or_handlers, AsyncAbsurd) else absurd_or_handlers
    )
    from_file = isinstance(file_or_records, str | PathLike)
    records = import_recorded(file_or_records) if from_file else list(file_or_records)  # pyright: ignore[reportArgumentType]

    async def replay() -> VerifyReport:
        return await replay_recorded(handlers, records)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        report = asyncio.run(replay())
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            report = pool.submit(asyncio.run, replay()).result()
    if not report.ok:
        failures = "\n".join(task.describe() for task in report.failures)
        raise AssertionError(f"{len(report.failures)} recorded task(s) do not replay on this code:\n{failures}")
    return ReplayReport(report.tasks)
