"""Exceptions raised by pydantic-ai-absurd.

Every error a user can fix carries a one-line, actionable message (`str(err)`); the CLI prints
exactly that line. `docs/troubleshooting.md` has one section per message.
"""

from __future__ import annotations

__all__ = [
    "DatabaseConnectionError",
    "EmbeddedPostgresError",
    "PydanticAIAbsurdError",
    "QueueNameError",
    "QueueNotFoundError",
    "SchemaInstallError",
    "SchemaNotInstalledError",
    "SchemaVersionError",
]


class PydanticAIAbsurdError(Exception):
    """Base class of every error raised by pydantic-ai-absurd."""


class DatabaseConnectionError(PydanticAIAbsurdError):
    """Postgres could not be reached or refused the connection.

    `reason` is one of `'auth'`, `'missing_database'`, `'missing_role'`, `'unreachable'`,
    `'invalid_dsn'` or `'other'`.
    """

    def __init__(self, message: str, *, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class SchemaNotInstalledError(PydanticAIAbsurdError):
    """The database has no Absurd schema (`absurd.get_schema_version()` is missing)."""


class SchemaInstallError(PydanticAIAbsurdError):
    """Postgres rejected the schema SQL (for example: the role may not create schemas)."""


class SchemaVersionError(PydanticAIAbsurdError):
    """The installed Absurd schema cannot be used or migrated by this version."""


class QueueNameError(PydanticAIAbsurdError, ValueError):
    """A queue name is empty or longer than Absurd's 57-byte limit."""


class QueueNotFoundError(PydanticAIAbsurdError):
    """The queue does not exist in the database."""


class EmbeddedPostgresError(PydanticAIAbsurdError):
    """The embedded (pip-installed) Postgres server could not be started, attached to or stopped."""
