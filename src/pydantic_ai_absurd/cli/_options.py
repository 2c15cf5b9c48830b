"""Options several subcommands share, spelled the same everywhere."""

from __future__ import annotations

import argparse

from ..errors import CommandLineError

__all__ = ["CommandLineError", "add_database_option", "add_queue_option", "at_least"]

DATABASE_HELP = "Postgres connection string (default: $ABSURD_DATABASE_URL, $PGDATABASE, postgresql://localhost/absurd)"


def add_database_option(parser: argparse.ArgumentParser, help: str = DATABASE_HELP) -> None:
    """`--database/-d DSN` on every command; `--dsn` is a hidden alias (the worker's former spelling)."""
    parser.add_argument("--database", "-d", metavar="DSN", help=help)
    parser.add_argument("--dsn", dest="database", metavar="DSN", help=argparse.SUPPRESS)


def add_queue_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--queue/-q NAME`."""
    parser.add_argument("--queue", "-q", metavar="NAME", help=help)


def at_least(option: str, value: float | None, minimum: float, *, inclusive: bool = True) -> None:
    """Refuse `value` of `option` below `minimum` (or equal to it, unless `inclusive`) with one line."""
    if value is None or value > minimum or (inclusive and value == minimum):
        return
    bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
    raise CommandLineError(f"{option} must be {bound}, not {value:g}.")
