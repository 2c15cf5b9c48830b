"""Every exception pydantic-ai-absurd raises; all derive from `PydanticAIAbsurdError`.

Every error a user can fix carries a one-line, actionable message (`str(err)`); the CLI prints
exactly that line. `docs/troubleshooting.md` has one section per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ChildTaskCancelledError",
    "ChildTaskFailedError",
    "UnregisteredTaskError",
    "UnknownTaskError",
    "TaskNotFoundError",
    "TaskFailedError",
    "TaskCancelledError",
    "TaskResultTimeoutError",
    "TaskResultNotSerializableError",
    "WorkerTargetError",
    "CommandLineError",
    "DatabaseConnectionError",
    "DurableTransactionError",
    "NonRetryableError",
    "ReplayDivergenceError",
    "UnserializableResultError",
    "UnstorableTextError",
    "EmbeddedPostgresError",
    "EventLogError",
    "ConversationConflictError",
    "ConversationUsageError",
    "ForkError",
    "RecordingError",
    "InvalidAnswerError",
    "InvalidDurationError",
    "RequestNotPendingError",
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


class EventLogError(PydanticAIAbsurdError):
    """The event log (`publish_events=True`, `stream_events`) cannot be used: its table is not installed."""


class IncompatibleSdkError(PydanticAIAbsurdError):
    """The installed `absurd_sdk` lacks a private name this package relies on (see the Compatibility page)."""


class NonRetryableError(PydanticAIAbsurdError):
    """Base for errors that can never succeed on retry: raise (a subclass of) it in a task to fail it at once.

    The task is failed for good with the error recorded as its failure reason, whatever attempts
    are left; no attempt is burned and no side effect is repeated.
    """


class DurableTransactionError(NonRetryableError):
    """`durable_transaction()` was used where its rows could not commit with a tool step's checkpoint.

    A second or nested block in one tool step, or a block inside a model request, an MCP call or an event
    handler; the message names the step. The same code would fail on every retry, so the task fails at once.
    """


class UnserializableResultError(NonRetryableError):
    """A step produced a value that cannot be stored as JSON in Postgres.

    The failure is checkpointed, so a retry of the task raises it again without running the tool again.
    """


class UnstorableTextError(NonRetryableError, ValueError):
    """Data to store holds text Postgres refuses (a NUL character or a lone surrogate) where it cannot be escaped.

    Raised by `spawn_task` for task parameters and headers, and by `fork_task` for new parameters; the
    message names where the text is. Inside a
    task it fails the task at once: the same data would be refused on every retry.
    """


class ReplayDivergenceError(NonRetryableError):
    """A replayed step was asked something other than what its checkpoint recorded.

    The code changed between deploys, or two concurrent agent runs of one task started in another order
    than on the first attempt. The stored result belongs to another call, so the run fails instead of
    returning it. `step` names the checkpoint; `recorded` and `requested` describe both requests, and
    `diff` shows what differs between them (when the checkpoint recorded its request).
    """

    def __init__(self, message: str, *, step: str, recorded: str, requested: str, diff: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.recorded = recorded
        self.requested = requested
        self.diff = diff
        """A unified diff of the recorded request and the new one, when the checkpoint recorded its request."""


class RequestNotPendingError(PydanticAIAbsurdError):
    """No pending inbox request has this token (unknown, already answered, expired, its task ended, or out of scope).

    `token` is the token that was answered.
    """

    def __init__(self, message: str, *, token: str) -> None:
        super().__init__(message)
        self.token = token


class InvalidAnswerError(PydanticAIAbsurdError, ValueError):
    """An answer does not fit the pending request: a tool call ID that is not pending, or a kind of answer it has no call for."""


class RecordingError(PydanticAIAbsurdError):
    """Recorded tasks could not be read for verification: an unknown task ID, or an unreadable export file."""


class ForkError(PydanticAIAbsurdError, ValueError):
    """A task cannot be forked as asked: unknown source task, or an `at_step` that is not a valid cut."""


class ConversationConflictError(NonRetryableError):
    """A durable turn could not save its conversation: another turn saved (or deleted) it since this one loaded it.

    Nothing this turn produced was saved, and the task is not retried (the same save would conflict
    again). `conversation_id` names the conversation; the store's `ConversationConflict` is the cause.
    """

    def __init__(self, message: str, *, conversation_id: str) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id


class ConversationUsageError(NonRetryableError):
    """A run was asked to use the agent's conversation store in a way that cannot work (e.g. with `message_history=`)."""


def one_line(err: BaseException, *, with_type: bool = False) -> str:
    """`str(err)` folded onto one line (the exception's type name when it says nothing).

    A pydantic `ValidationError` is summarised by `validation_message`, without its documentation URLs.
    """
    text = " ".join(validation_message(err).split())
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if with_type else text


def validation_message(err: BaseException) -> str:
    """`str(err)`; for a pydantic `ValidationError`, one line without inputs and documentation URLs."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    count = err.error_count()
    return f"{count} validation error{'s' if count != 1 else ''} for {err.title}: {validation_summary(err)}"


def validation_summary(err: ValidationError, *, limit: int = 3) -> str:
    """A pydantic `ValidationError` on one line, `where: what` per error, without inputs or documentation URLs."""
    found: dict[str, str] = {}
    for error in err.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        # Drop the union member a message is about (`approvals.x.bool` for `bool_type`, `...[A,B]` tags).
        loc = [part for part in loc if "[" not in part]
        if loc and error["type"].startswith(f"{loc[-1]}_"):
            loc.pop()
        found.setdefault(".".join(loc) or "the value", error["msg"])
    # Of the members of a union, the one that got furthest says best what is wrong.
    parts = [f"{where}: {what}" for where, what in found.items() if not any(o.startswith(f"{where}.") for o in found)]
    more = f" (and {len(parts) - limit} more)" if len(parts) > limit else ""
    return " ".join(("; ".join(parts[:limit]) + more).split())


class InvalidDurationError(PydanticAIAbsurdError, ValueError):
    """A duration option (`tasks --since`) is not a number of seconds or a span like `90s`, `15m`, `2h`, `7d`."""


class UnregisteredTaskError(PydanticAIAbsurdError, ValueError):
    """A task not registered on the spawning client was spawned without `queue=`."""


class UnknownTaskError(UnregisteredTaskError):
    """No worker of the queue runs a task of this name: the queue's workers recorded theirs, and it is not one."""


class TaskNotFoundError(PydanticAIAbsurdError, LookupError):
    """No task with this id exists in the queue (wrong id or queue, or cleaned up)."""


class TaskFailedError(PydanticAIAbsurdError):
    """The task failed for good; `failure` is the failure reason Absurd stored (`name`, `message`, ...)."""

    def __init__(self, message: str, *, task_id: str, failure: Any) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.failure = failure


class TaskCancelledError(PydanticAIAbsurdError):
    """The task was cancelled (by `cancel_task` or its cancellation policy) and has no result."""

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class ChildTaskFailedError(NonRetryableError):
    """A child task of `AbsurdAgent.run_as_child` failed for good; the message names it and its failure.

    Raised in the parent at the call, on its first run and on every replay (the end is checkpointed). A tool may
    catch it and return something else; uncaught, it fails the parent at once (the child used its attempts).
    """

    def __init__(self, message: str, *, task_id: str, task_name: str, failure: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name
        self.failure = failure


class ChildTaskCancelledError(NonRetryableError):
    """A child task of `AbsurdAgent.run_as_child` was cancelled before it finished."""

    def __init__(self, message: str, *, task_id: str, task_name: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name


class TaskResultTimeoutError(PydanticAIAbsurdError, TimeoutError):
    """`wait_for_result` gave up before the task finished; the task keeps running."""


class TaskResultNotSerializableError(NonRetryableError, TypeError):
    """A task handler returned a value that is not JSON-serializable; Absurd can only store JSON results."""


class WorkerTargetError(PydanticAIAbsurdError):
    """`pydantic-ai-absurd worker MODULE:ATTRIBUTE` could not load an `AsyncAbsurd` client from the target."""


class CommandLineError(PydanticAIAbsurdError):
    """An option's value is out of range (the CLI prints this one line and exits 2)."""
