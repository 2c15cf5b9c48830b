"""The `cancel` subcommand: cancel a task, as `absurdctl cancel-task` does."""

from __future__ import annotations

import argparse
from typing import Any

from . import _output
from ._options import add_database_option, add_queue_option


def add_parsers(subparsers: Any) -> None:
    """Add `cancel TASK_ID` to the CLI."""
    cancel = subparsers.add_parser(
        "cancel",
        help="cancel a task: it runs no further step, and its inbox requests are no longer pending",
        description=(
            "Cancel TASK_ID: its pending or sleeping run ends now, a running attempt stops at its next "
            "step, its inbox requests drop out of `inbox`, and its unfinished child tasks (and theirs) are "
            "cancelled too. A finished task is left as it is."
        ),
    )
    cancel.add_argument("task_id", metavar="TASK_ID", help="the task id spawn returned")
    add_database_option(cancel)
    add_queue_option(cancel, "the task's queue (default: search every queue)")
    cancel.set_defaults(handler=_cmd_cancel, needs_schema=True)


async def _cmd_cancel(args: argparse.Namespace) -> int:
    import psycopg
    from absurd_sdk import AsyncAbsurd

    from .._absurd import TERMINAL_TASK_STATES, list_queue_names, read_task
    from .._db import connect_async, queue_not_found
    from .._dsn import resolve_dsn
    from ..children import cancel_descendants
    from ..client import TaskNotFoundError

    async with await connect_async(resolve_dsn(args.database), autocommit=True) as conn:
        queues = [args.queue] if args.queue else await list_queue_names(conn)
        for queue in queues:
            try:
                task = await read_task(conn, queue, args.task_id)
            except psycopg.errors.InvalidTextRepresentation as err:
                raise TaskNotFoundError(f"{args.task_id!r} is not a task id (a UUID).") from err
            except psycopg.errors.UndefinedTable as err:
                raise queue_not_found(queue, "check the name.") from err
            if task is None:
                continue
            state = str(task["state"])
            if state in TERMINAL_TASK_STATES:
                _output.echo(f"Task {args.task_id} on queue {queue} is already {state}; nothing to cancel.")
                return 0
            # Absurd's cancel_task: the task and its live runs become `cancelled` and its waits are dropped;
            # the inbox stops listing the task's requests, which it reads with the task's state.
            await AsyncAbsurd(conn, queue_name=queue).cancel_task(args.task_id)
            # Its unfinished child tasks (`run_as_child`) and theirs: the queue's triggers cancel them too; this
            # covers queues whose triggers are missing.
            await cancel_descendants(conn, queue, args.task_id)
            _output.echo(f"Cancelled task {args.task_id} ({task['task_name']}, was {state}) on queue {queue}.")
            return 0
    where = f"queue {args.queue!r}" if args.queue else "any queue"
    raise TaskNotFoundError(f"No task {args.task_id} in {where}: check the id and the queue.")
