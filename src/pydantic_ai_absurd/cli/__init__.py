"""The `pydantic-ai-absurd` command line: every subcommand, one module per group of them.

Each subcommand sets `handler`: a callable taking the parsed `argparse.Namespace` and returning
an exit code (`int`/`None`) or an awaitable of one (run with `asyncio.run`). `validate`, when set,
checks option values first; subcommands that read the database of `--database` set `needs_schema`,
so a database without Absurd's schema is reported before they run. Errors derived from
`PydanticAIAbsurdError` print one line to stderr and exit with status 2, without a traceback.
Everything printed goes through `_output`, which shows control characters as escapes.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .._dsn import resolve_dsn
from .._text import visible
from ..errors import PydanticAIAbsurdError
from . import _cancel, _database, _deploy, _inbox, _inspect, _output, _worker
from ._errors import missing_schema_error, require_schema

__all__ = ["build_parser", "main"]

_PROG = "pydantic-ai-absurd"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_PROG)
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """Usage errors with control characters escaped (they quote the arguments given)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {visible(message)}\n")


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(prog=_PROG, description="Durable Pydantic AI agents on Postgres (Absurd).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parsers in (
        _database.add_parsers,
        _worker.add_parsers,
        _inspect.add_parsers,
        _cancel.add_parsers,
        _deploy.add_parsers,
        _inbox.add_parsers,
    ):
        add_parsers(subparsers)
    return parser, dict(subparsers.choices)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    return _build()[0]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser, commands = _build()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The subcommand's usage, not the top level's: the wrong flag belongs to the subcommand.
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pydantic-ai-absurd` command."""
    args = _parse(argv)
    try:
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)
        if getattr(args, "needs_schema", False):
            require_schema(resolve_dsn(args.database))
        result: Any = args.handler(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except PydanticAIAbsurdError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        mapped = missing_schema_error(exc, args)
        if mapped is None:
            raise
        return _fail(mapped)
    return int(result or 0)


def _fail(exc: BaseException) -> int:
    _output.error(f"{_PROG}: error: {exc}")
    return 2


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
