"""The `verify` and `fork` subcommands: check recorded runs against new code, fork a run from a step."""

from __future__ import annotations

import argparse
import json
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._absurd import TASK_STATES
from ..errors import ForkError, RecordingError
from . import _output
from ._options import add_database_option, add_queue_option, at_least

if TYPE_CHECKING:
    from absurd_sdk import AsyncAbsurd

    from ..verify import ProgressCallback

PROGRESS_FROM = 5
"""`verify` shows a progress line on a terminal's stderr when it verifies at least this many tasks."""


def add_parsers(subparsers: Any) -> None:
    """Add `verify MODULE:ATTRIBUTE ...` and `fork TASK_ID --at STEP` to the CLI."""
    verify = subparsers.add_parser(
        "verify",
        help="replay recorded tasks against the code in MODULE:ATTRIBUTE, executing nothing",
        description=(
            "Replay recorded tasks (default: every running or sleeping task of the queue) against the handlers "
            "registered on MODULE:ATTRIBUTE, in a sandbox that sends no model request, runs no tool and writes "
            "nothing. Exit 0 when every task replays cleanly, 1 otherwise."
        ),
    )
    verify.add_argument("target", metavar="MODULE:ATTRIBUTE", help="e.g. myapp.tasks:absurd")
    add_queue_option(verify, "queue of the recorded tasks (default: the client's queue)")
    add_database_option(verify, "database of the recorded tasks (default: the client's)")
    verify.add_argument("--task", action="append", metavar="ID", help="verify this task (repeatable)")
    verify.add_argument(
        "--state",
        default="running,sleeping",
        help="comma-separated task states to verify when no --task is given (default running,sleeping)",
    )
    verify.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="longest replay of one task (default 30)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--export", metavar="FILE", help="also write the recorded tasks to FILE (JSON fixtures)")
    source.add_argument("--from", dest="from_file", metavar="FILE", help="verify the tasks recorded in FILE")
    verify.set_defaults(handler=verify_command, validate=_check_verify)

    fork = subparsers.add_parser(
        "fork",
        help="start a new task that reuses the first steps of TASK_ID and runs the rest live",
        description=(
            "Spawn a task of the same name as TASK_ID whose first STEP steps replay TASK_ID's checkpoints "
            "(no model request of that prefix is sent again); the rest runs live on a worker. Prints the new ID."
        ),
    )
    fork.add_argument("task_id", metavar="TASK_ID")
    fork.add_argument("--at", dest="at_step", type=int, required=True, metavar="STEP", help="steps to reuse")
    add_queue_option(fork, "the task's queue (default: search every queue)")
    fork.add_argument("--params", metavar="JSON", help="params for the fork (default: the source task's)")
    add_database_option(fork)
    fork.set_defaults(handler=fork_command, needs_schema=True, validate=_check_fork)


def _check_verify(args: argparse.Namespace) -> None:
    at_least("--timeout", args.timeout, 0, inclusive=False)
    _states(args.state)


def _check_fork(args: argparse.Namespace) -> None:
    at_least("--at", args.at_step, 0)


def _states(text: str) -> list[str]:
    states = [state.strip() for state in text.split(",") if state.strip()]
    unknown = [state for state in states if state not in TASK_STATES]
    if unknown or not states:
        raise RecordingError(f"--state {text!r} is not a list of task states; use some of {', '.join(TASK_STATES)}.")
    return states


async def verify_command(args: argparse.Namespace) -> int:
    """Run `verify`; exit code 0 when every task replays cleanly, 1 otherwise."""
    from ..verify import export_recorded, import_recorded, verify_replay
    from ._worker import resolve_client

    absurd = await resolve_client(args.target)
    try:
        if args.from_file:
            records = import_recorded(args.from_file)
            if args.task:
                wanted = set(args.task)
                records = [record for record in records if record.task_id in wanted]
        else:
            records = await _recorded(absurd, args)
        if args.export:
            count = export_recorded(args.export, records)
            if not args.json:
                _output.echo(f"wrote {count} recorded task(s) to {args.export}")
        with _progress_line(len(records)) as progress:
            report = await verify_replay(absurd, records=records, timeout=args.timeout, progress=progress)
    finally:
        await absurd.close()
    if args.json:
        _output.print_json(report.to_json())
    else:
        _output.echo(report.describe())
    return 0 if report.ok else 1


async def _recorded(absurd: AsyncAbsurd, args: argparse.Namespace) -> list[Any]:
    import asyncio

    from absurd_sdk import AsyncAbsurd

    from .._absurd import client_conninfo, client_queue_name
    from ..verify import recorded_tasks
    from ._errors import require_schema

    states = _states(args.state)
    dsn = args.database or client_conninfo(absurd)
    if dsn is not None:
        await asyncio.to_thread(require_schema, dsn)
    if args.database is None:
        return await recorded_tasks(absurd, args.task, queue=args.queue, states=states)
    source = AsyncAbsurd(args.database, queue_name=args.queue or client_queue_name(absurd))
    try:
        return await recorded_tasks(source, args.task, states=states)
    finally:
        await source.close()


@contextmanager
def _progress_line(total: int) -> Generator[ProgressCallback | None]:
    """A transient `verifying N/M` line on stderr when it is a terminal and there are many tasks to verify."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
    if total < PROGRESS_FROM or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        job = bar.add_task("verify", total=total)

        def progress(done: int, _total: int) -> None:
            bar.update(job, completed=done)

        yield progress


async def fork_command(args: argparse.Namespace) -> int:
    """Run `fork`: print the new task's ID."""
    from absurd_sdk import AsyncAbsurd

    from .._dsn import resolve_dsn
    from ..verify import fork_task
    from ..verify._records import find_task_queue

    params: Any = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as err:
            raise ForkError(f"--params is not JSON: {err}.") from err
    absurd = AsyncAbsurd(resolve_dsn(args.database), queue_name=args.queue or "default")
    try:
        queue = args.queue or await find_task_queue(absurd, args.task_id)
        if queue is None:
            raise ForkError(f"Cannot fork task {args.task_id!r}: no queue has such a task.")
        new_id = await fork_task(absurd, args.task_id, at_step=args.at_step, params=params, queue=queue)
    finally:
        await absurd.close()
    _output.echo(new_id)
    return 0
