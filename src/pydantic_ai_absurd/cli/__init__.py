"""The `pydantic-ai-absurd` command line: every subcommand, one module per group of them.

Each subcommand sets `handler`: a callable taking the parsed `argparse.Namespace` and returning
an exit code (`int`/`None`) or an awaitable of one (run with `asyncio.run`). Errors derived from
`PydanticAIAbsurdError` print one line to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import PydanticAIAbsurdError
from . import _database, _deploy, _inbox, _inspect, _worker

__all__ = ["build_parser", "main"]

_PROG = "pydantic-ai-absurd"


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Durable Pydantic AI agents on Postgres (Absurd).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for add_parsers in (
        _database.add_parsers,
        _worker.add_parsers,
        _inspect.add_parsers,
        _deploy.add_parsers,
        _inbox.add_parsers,
    ):
        add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pydantic-ai-absurd` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: Any = args.handler(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except PydanticAIAbsurdError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
