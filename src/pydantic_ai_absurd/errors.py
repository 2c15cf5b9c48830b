"""Every exception pydantic-ai-absurd raises; all derive from `PydanticAIAbsurdError`.

Every error a user can fix carries a one-line, actionable message (`str(err)`); the CLI prints
exactly that line. `docs/troubleshooting.md` has one section per message.
"""

from __future__ import annotations

__all__ = [
    "DatabaseConnectionError",
    "NonRetryableError",
    "ReplayDivergenceError",
    "UnserializableResultError",
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


class IncompatibleSdkError(PydanticAIAbsurdError):
    """The installed `absurd_sdk` lacks a private name this package relies on (see the Compatibility page)."""


class NonRetryableError(PydanticAIAbsurdError):
    """Base for errors that can never succeed on retry: raise (a subclass of) it in a task to fail it at once.

    The task is failed for good with the error recorded as its failure reason, whatever attempts
    are left; no attempt is burned and no side effect is repeated.
    """


class UnserializableResultError(NonRetryableError):
    """A step produced a value that cannot be stored as JSON in Postgres.

    The failure is checkpointed, so a retry of the task raises it again without running the tool again.
    """


class ReplayDivergenceError(NonRetryableError):
    """A replayed step was asked something other than what its checkpoint recorded.

    The code changed between deploys, or two concurrent agent runs of one task started in another order
    than on the first attempt. The stored result belongs to another call, so the run fails instead of
    returning it. `step` names the checkpoint; `recorded` and `requested` describe both requests.
    """

    def __init__(self, message: str, *, step: str, recorded: str, requested: str) -> None:
        super().__init__(message)
        self.step = step
        self.recorded = recorded
        self.requested = requested


def one_line(err: BaseException, *, with_type: bool = False) -> str:
    """`str(err)` folded onto one line (the exception's type name when it says nothing)."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if with_type else text
