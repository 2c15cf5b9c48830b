"""The `inspect` and `tasks` subcommands: what a durable task did, and which tasks exist."""

from __future__ import annotations

import argparse
from typing import Any

from .._absurd import TASK_STATES
from . import _output
from ._options import add_database_option, add_queue_option, at_least

STATE_STYLES = {
    "pending": "dim",
    "running": "cyan",
    "sleeping": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
"""Colour of each task state in tables, when stdout is a colour terminal."""

_TASK_COLUMNS = {
    "NAME": _output.Column("NAME", max_width=24),
    "STATE": _output.Column("STATE", styles=STATE_STYLES),
    "ATT": _output.Column("ATT", right=True),
    "AGE": _output.Column("AGE", right=True),
}


def add_parsers(subparsers: Any) -> None:
    """Add `inspect TASK_ID` and `tasks` to the CLI."""
    inspect = subparsers.add_parser(
        "inspect",
        help="show what a task did: attempts, steps by agent run, tokens spent and saved",
        description="Show a task's attempts and every step of its agent runs, with token totals.",
    )
    inspect.add_argument("task_id", metavar="TASK_ID", help="the task id spawn returned")
    add_database_option(inspect)
    add_queue_option(inspect, "the task's queue (default: search every queue)")
    inspect.add_argument("--json", action="store_true", help="print the timeline as JSON (stable, documented)")
    inspect.set_defaults(handler=_cmd_inspect, needs_schema=True)

    tasks = subparsers.add_parser(
        "tasks",
        help="list tasks, newest first, with state, attempts, age and last step",
        description="List tasks newest first, with state, attempts, age and the agent's last step.",
    )
    add_database_option(tasks)
    add_queue_option(tasks, "only this queue (default: every queue)")
    tasks.add_argument("--state", "-s", choices=TASK_STATES, help="only tasks in this state")
    tasks.add_argument("--name", "-n", metavar="TASK_NAME", help="only tasks with this task name")
    tasks.add_argument("--since", metavar="DURATION", help="only tasks spawned within DURATION (90s, 15m, 2h, 7d)")
    tasks.add_argument("--limit", type=int, default=50, metavar="N", help="at most N tasks (default 50)")
    tasks.add_argument("--json", action="store_true", help="print the tasks as JSON (stable, documented)")
    tasks.set_defaults(handler=_cmd_tasks, needs_schema=True, validate=_check_tasks)


async def _cmd_inspect(args: argparse.Namespace) -> int:
    from .._dsn import resolve_dsn
    from ..inspection import inspect_task
    from ..inspection._render import render_timeline

    timeline = await inspect_task(resolve_dsn(args.database), args.task_id, queue=args.queue)
    if args.json:
        _output.print_json(timeline.to_json())
    else:
        _output.echo(render_timeline(timeline))
    return 0


def _check_tasks(args: argparse.Namespace) -> None:
    from ..inspection._render import parse_duration

    at_least("--limit", args.limit, 1)
    if args.since is not None:
        parse_duration(args.since)


async def _cmd_tasks(args: argparse.Namespace) -> int:
    from .._dsn import resolve_dsn
    from ..inspection import JSON_FORMAT_VERSION, list_tasks
    from ..inspection._render import TASK_HEADERS, parse_duration, task_row, unknown_task_notes

    since = None if args.since is None else parse_duration(args.since)
    found = await list_tasks(
        resolve_dsn(args.database), queue=args.queue, state=args.state, name=args.name, since=since, limit=args.limit
    )
    if args.json:
        payload = {"format": JSON_FORMAT_VERSION, "tasks": [task.to_json() for task in found]}
        _output.print_json(payload)
    elif not found:
        print("No tasks.")
    else:
        rows = [task_row(task) for task in found]
        columns = [_TASK_COLUMNS.get(header, _output.Column(header)) for header in TASK_HEADERS]
        if len({task.queue for task in found}) == 1:  # one queue: no QUEUE column
            columns.pop(1)
            rows = [row[:1] + row[2:] for row in rows]
        _output.print_table(columns, rows)
        for note in unknown_task_notes(found):
            _output.echo(note)
    return 0
