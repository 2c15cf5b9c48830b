"""The `inbox`, `approve`, `deny` and `answer` subcommands: list and answer the human input durable runs wait for."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from . import _output
from ._options import add_database_option, add_queue_option, at_least

if TYPE_CHECKING:
    from ..inbox import Inbox, PendingRequest

__all__ = ["add_parsers"]

_COLUMNS = (
    _output.Column("TOKEN"),
    _output.Column("KIND"),
    _output.Column("TOOL", max_width=32),
    _output.Column("CALL"),
    _output.Column("TASK"),
    _output.Column("AGE", right=True),
    _output.Column("ARGUMENTS"),
)


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    add_database_option(parser)
    add_queue_option(parser, "only requests of tasks on this queue (default: all)")
    parser.add_argument("--scope", metavar="SCOPE", help="only requests of this scope (see `Inbox(scope=...)`)")


def _decision_parser(
    subparsers: Any, verb: str, summary: str, handler: Callable[[argparse.Namespace], Awaitable[int]]
) -> argparse.ArgumentParser:
    """The parser of `approve` or `deny` (`verb`): TOKEN, `--call` (repeatable) and `--by`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(verb, help=summary)
    _add_database_options(parser)
    parser.add_argument("token", metavar="TOKEN")
    parser.add_argument("--call", metavar="ID", action="append", help=f"tool call ID to {verb} (repeatable)")
    parser.add_argument("--by", metavar="NAME", help="who answers (kept as `answered_by`)")
    parser.set_defaults(handler=handler, needs_schema=True)
    return parser


def add_parsers(subparsers: Any) -> None:
    """Add `inbox`, `approve`, `deny` and `answer` to the CLI."""
    listing = subparsers.add_parser("inbox", help="list the requests durable runs wait for (oldest first)")
    _add_database_options(listing)
    listing.add_argument("--task", metavar="TASK_ID", help="only requests of this task")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N requests")
    listing.add_argument("--json", action="store_true", help="print JSON (one array) instead of a table")
    listing.set_defaults(handler=_cmd_inbox, needs_schema=True, validate=_check_inbox)

    _decision_parser(subparsers, "approve", "approve pending calls of a request (default: all of them)", _cmd_approve)
    deny = _decision_parser(
        subparsers, "deny", "deny pending calls of a request; the model is told the reason", _cmd_deny
    )
    deny.add_argument("--reason", required=True, help="what the model is told")

    answer = subparsers.add_parser("answer", help="answer a request with DeferredToolResults JSON")
    _add_database_options(answer)
    answer.add_argument("token", metavar="TOKEN")
    answer.add_argument(
        "--results",
        required=True,
        metavar="JSON",
        help='DeferredToolResults as JSON, e.g. \'{"calls": {"call-1": "42"}, "approvals": {"call-2": true}}\'',
    )
    answer.set_defaults(handler=_cmd_answer, needs_schema=True)


def _inbox(args: argparse.Namespace) -> Inbox:
    from absurd_sdk import AsyncAbsurd

    from .._dsn import resolve_dsn
    from ..inbox import Inbox

    dsn = resolve_dsn(args.database)
    return Inbox(AsyncAbsurd(dsn, queue_name=args.queue or "default"), dsn=dsn)


def _age(asked_at: datetime, now: datetime) -> str:
    seconds = max(int((now - asked_at).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rows(request: PendingRequest, now: datetime) -> list[list[str]]:
    rows: list[list[str]] = []
    calls = [("approve", call) for call in request.approvals] + [("result", call) for call in request.calls]
    for kind, call in calls:
        rows.append(
            [
                request.token,
                kind,
                call.tool_name,
                call.tool_call_id,
                request.task_id,
                _age(request.asked_at, now),
                call.args_as_json_str(),
            ]
        )
    return rows


def _as_json(request: PendingRequest) -> dict[str, Any]:
    def call(part: Any) -> dict[str, Any]:
        return {"tool_name": part.tool_name, "tool_call_id": part.tool_call_id, "args": part.args_as_dict()}

    return {
        "token": request.token,
        "task_id": request.task_id,
        "queue_name": request.queue_name,
        "task_name": request.task_name,
        "agent_name": request.agent_name,
        "name": request.name,
        "approvals": [call(part) for part in request.approvals],
        "calls": [call(part) for part in request.calls],
        "metadata": request.metadata,
        "scope": request.scope,
        "asked_at": request.asked_at.isoformat(),
        "expires_at": None if request.expires_at is None else request.expires_at.isoformat(),
    }


def _check_inbox(args: argparse.Namespace) -> None:
    at_least("--limit", args.limit, 1)


async def _cmd_inbox(args: argparse.Namespace) -> int:
    from datetime import UTC

    requests = await _inbox(args).pending(task_id=args.task, scope=args.scope, limit=args.limit, queue_name=args.queue)
    if args.json:
        _output.print_json([_as_json(request) for request in requests])
        return 0
    if not requests:
        print("No pending requests.")
        return 0
    now = datetime.now(UTC)
    _output.print_table(_COLUMNS, [row for request in requests for row in _rows(request, now)])
    return 0


def _report(token: str, remaining: PendingRequest | None, verb: str) -> int:
    if remaining is None:
        _output.echo(f"{verb} {token}; the run continues.")
    else:
        _output.echo(f"{verb} {token}; still pending: {', '.join(remaining.tool_call_ids)}.")
    return 0


async def _cmd_approve(args: argparse.Namespace) -> int:
    remaining = await _inbox(args).approve(
        args.token, tool_call_ids=args.call, answered_by=args.by, scope=args.scope, queue_name=args.queue
    )
    return _report(args.token, remaining, "Approved")


async def _cmd_deny(args: argparse.Namespace) -> int:
    remaining = await _inbox(args).deny(
        args.token,
        reason=args.reason,
        tool_call_ids=args.call,
        answered_by=args.by,
        scope=args.scope,
        queue_name=args.queue,
    )
    return _report(args.token, remaining, "Denied")


_RESULTS_EXAMPLE = '{"calls": {"CALL_ID": "result"}, "approvals": {"CALL_ID": true}}'
_RESULTS_FIELDS = ("calls", "approvals", "metadata", "answered_by")


def _results_error(problem: str) -> Exception:
    from ..errors import InvalidAnswerError

    return InvalidAnswerError(
        f"--results is not DeferredToolResults JSON: {problem}; expected an object with "
        f"{', '.join(_RESULTS_FIELDS)}, e.g. '{_RESULTS_EXAMPLE}'."
    )


def _parse_results(text: str) -> Any:
    """`--results` as `DeferredToolResults`, or one line saying what is wrong with it."""
    from pydantic import ValidationError

    from ..errors import validation_summary
    from ..inbox._answers import RESULTS_ADAPTER

    try:
        data: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _results_error(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _results_error(f"a JSON {type(data).__name__}, not an object")
    if unknown := sorted(set(cast(dict[str, object], data)) - set(_RESULTS_FIELDS)):
        raise _results_error(f"unknown field(s) {', '.join(map(repr, unknown))}")
    try:
        return RESULTS_ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise _results_error(validation_summary(exc)) from None


async def _cmd_answer(args: argparse.Namespace) -> int:
    results = _parse_results(args.results)
    remaining = await _inbox(args).answer(args.token, results, scope=args.scope, queue_name=args.queue)
    return _report(args.token, remaining, "Answered")
