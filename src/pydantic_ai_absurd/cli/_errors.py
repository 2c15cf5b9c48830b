"""What the CLI prints when a command cannot run: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse

from .._absurd import has_schema_version_sync
from .._db import connect
from .._dsn import redact_dsn, resolve_dsn
from ..errors import SchemaNotInstalledError

__all__ = ["missing_schema_error", "require_schema"]


def _not_installed(where: str) -> SchemaNotInstalledError:
    # The worker and `check_schema()` say the same (schema._install._check_version).
    return SchemaNotInstalledError(
        f"The Absurd schema is not installed in {where}: run `pydantic-ai-absurd init --database ...` "
        "(or `await pydantic_ai_absurd.setup(...)`)."
    )


def _where(args: argparse.Namespace) -> str:
    database: str | None = getattr(args, "database", None)
    if database is None and getattr(args, "target", None) is not None:
        return "the client's database"
    return redact_dsn(resolve_dsn(database))


def require_schema(dsn: str) -> None:
    """Raise the one-line `SchemaNotInstalledError` when the database of `dsn` has no Absurd schema."""
    with connect(dsn, autocommit=True) as conn:
        installed = has_schema_version_sync(conn)
    if not installed:
        raise _not_installed(redact_dsn(dsn))


def missing_schema_error(exc: BaseException, args: argparse.Namespace) -> SchemaNotInstalledError | None:
    """The one-line error for a psycopg error that says a schema, table or function of ours is missing."""
    import psycopg

    missing = (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable)
    if not isinstance(exc, missing):
        return None
    text = str(exc)
    if "absurd" not in text:  # also matches pydantic_ai_absurd
        return None
    return _not_installed(_where(args))
