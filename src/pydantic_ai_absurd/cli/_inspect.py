"""The `inspect` and `tasks` subcommands: what a durable task did, and which tasks exist."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._absurd import TASK_STATES
from ._options import add_database_option


def add_parsers(subparsers: Any) -> None:
    """Add `inspect TASK_ID` and `tasks` to the CLI."""
    inspect = subparsers.add_parser(
        "inspect",
        help="show what a task did: attempts, steps by agent run, tokens spent and saved",
        description="Show a task's attempts and every step of its agent runs, with token totals.",
    )
    inspect.add_argument("task_id", metavar="TASK_ID", help="the task id spawn returned")
    add_database_option(inspect)
    inspect.add_argument("--queue", "-q", metavar="NAME", help="the task's queue (default: search every queue)")
    inspect.add_argument("--json", action="store_true", help="print the timeline as JSON (stable, documented)")
    inspect.set_defaults(handler=_cmd_inspect)

    tasks = subparsers.add_parser(
        "tasks",
        help="list tasks, newest first, with state, attempts, age and last step",
        description="List tasks newest first, with state, attempts, age and the agent's last step.",
    )
    add_database_option(tasks)
    tasks.add_argument("--queue", "-q", metavar="NAME", help="only this queue (default: every queue)")
    tasks.add_argument("--state", "-s", choices=TASK_STATES, help="only tasks in this state")
    tasks.add_argument("--name", "-n", metavar="TASK_NAME", help="only tasks with this task name")
    tasks.add_argument("--since", metavar="DURATION", help="only tasks spawned within DURATION (90s, 15m, 2h, 7d)")
    tasks.add_argument("--limit", type=int, default=50, metavar="N", help="at most N tasks (default 50)")
    tasks.add_argument("--json", action="store_true", help="print the tasks as JSON (stable, documented)")
    tasks.set_defaults(handler=_cmd_tasks)


async def _cmd_inspect(args: argparse.Namespace) -> int:
    from .._dsn import resolve_dsn
    from ..inspection import inspect_task
    from ..inspection._render import render_timeline

    timeline = await inspect_task(resolve_dsn(args.database), args.task_id, queue=args.queue)
    if args.json:
        print(json.dumps(timeline.to_json(), ensure_ascii=False, indent=2, default=str))
    else:
        print(render_timeline(timeline))
    return 0


async def _cmd_tasks(args: argparse.Namespace) -> int:
    from .._dsn import resolve_dsn
    from ..inspection import JSON_FORMAT_VERSION, list_tasks
    from ..inspection._render import parse_duration, render_tasks

    since = None if args.since is None else parse_duration(args.since)
    found = await list_tasks(
        resolve_dsn(args.database),
        queue=args.queue,
        state=args.state,
        name=args.name,
        since=since,
        limit=max(args.limit, 1),
    )
    if args.json:
        payload = {"format": JSON_FORMAT_VERSION, "tasks": [task.to_json() for task in found]}
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(render_tasks(found))
    return 0
