"""Connection strings: resolution order, redaction, and connection errors as one-line messages (`_db` connects)."""

from __future__ import annotations

import os
import re
from urllib.parse import quote

import psycopg

from .errors import DatabaseConnectionError

__all__ = [
    "DEFAULT_DSN",
    "connection_error",
    "connection_url",
    "redact_dsn",
    "resolve_dsn",
]

DEFAULT_DSN = "postgresql://localhost/absurd"
"""Absurd's fallback when neither an argument nor an environment variable names a database."""

_URI_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^/?#@:]*:)[^/?#@]*@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)


_UNREACHABLE = (
    "connection refused",
    "no such file or directory",
    "could not translate host name",
    "failed to resolve host",
    "name or service not known",
    "timeout expired",
    "could not connect",
    "network is unreachable",
    "no route to host",
    "connection timed out",
)
"""libpq's words for a server it could not reach."""


def resolve_dsn(dsn: str | None = None) -> str:
    """Return the connection string to use, with Absurd's precedence.

    Explicit argument, then `ABSURD_DATABASE_URL`, then `PGDATABASE`, then
    `postgresql://localhost/absurd` (the same order as `absurdctl` and `absurd_sdk`).
    """
    return dsn or os.environ.get("ABSURD_DATABASE_URL") or os.environ.get("PGDATABASE") or DEFAULT_DSN


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***`, safe to print or log."""
    if "://" in dsn:
        dsn = _URI_PASSWORD.sub(r"\g<head>***@", dsn)
        return _QUERY_PASSWORD.sub(r"\g<head>***", dsn)
    return _KV_PASSWORD.sub(r"\g<head>***", dsn)


def connection_url(info: psycopg.ConnectionInfo) -> str:
    """`postgresql://user@host:port/dbname` of an open connection, without password or libpq's options."""
    user, host, dbname = (quote(part, safe="") for part in (info.user, info.host, info.dbname))
    return f"postgresql://{user}@{host}:{info.port}/{dbname}"


def connection_error(exc: BaseException, dsn: str) -> DatabaseConnectionError:
    """Map a psycopg connection failure to a one-line, actionable `DatabaseConnectionError`.

    Connection failures carry no SQLSTATE in psycopg (libpq reports them as text), so the
    mapping reads libpq's / the server's English message.
    """
    text = str(exc)
    lowered = text.lower()
    where = redact_dsn(dsn)
    if isinstance(exc, psycopg.ProgrammingError) or "invalid connection option" in lowered:
        detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return DatabaseConnectionError(
            f"Invalid Postgres connection string {where!r}: {detail}. "
            "Use a URL like postgresql://user:password@host:5432/dbname.",
            reason="invalid_dsn",
        )
    if (
        "password authentication failed" in lowered
        or "no password supplied" in lowered
        or ("authentication failed" in lowered)
    ):
        return DatabaseConnectionError(
            f"Postgres rejected the credentials in {where}: check the user name and password "
            "(or PGPASSWORD / ~/.pgpass).",
            reason="auth",
        )
    match = re.search(r'database "([^"]+)" does not exist', text)
    if match:
        name = match.group(1)
        return DatabaseConnectionError(
            f'Database "{name}" does not exist on the server of {where}: create it first '
            f'(e.g. `createdb {name}` or `CREATE DATABASE "{name}"`) or point ABSURD_DATABASE_URL at an existing one.',
            reason="missing_database",
        )
    match = re.search(r'role "([^"]+)" does not exist', text)
    if match:
        return DatabaseConnectionError(
            f'Postgres role "{match.group(1)}" does not exist on the server of {where}: '
            "use an existing user in the connection string or create the role.",
            reason="missing_role",
        )
    if any(marker in lowered for marker in _UNREACHABLE):
        return DatabaseConnectionError(
            f"Cannot reach Postgres at {where}: is the server running and accepting connections there? "
            "(For a local dev server run `pydantic-ai-absurd dev`.)",
            reason="unreachable",
        )
    first_line = " ".join(text.split()) or type(exc).__name__
    return DatabaseConnectionError(f"Cannot connect to Postgres at {where}: {first_line}", reason="other")
