"""Options several subcommands share, spelled the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_database_option"]

DATABASE_HELP = "Postgres connection string (default: $ABSURD_DATABASE_URL, $PGDATABASE, postgresql://localhost/absurd)"


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """`--database/-d DSN`, as `init` has it."""
    parser.add_argument("--database", "-d", metavar="DSN", help=DATABASE_HELP)
