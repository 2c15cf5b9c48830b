"""Retries that fit LLM work: exponential backoff by default, and no retries for errors that cannot succeed.

Absurd retries a task by running it again from the top (finished steps replay from their checkpoints)
per the task's `retry_strategy` and `max_attempts`. Its default is 5 attempts with **no delay**,
which turns a provider rate limit or outage into five failures within a second. And it retries every
exception, including ones that fail the same way every time (invalid parameters, a programming error,
a result that is not JSON), burning attempts and repeating side effects.

`run_worker` applies `RetryPolicy` to every task it executes:

- a task spawned without a `retry_strategy` is retried with `RetryPolicy.default_strategy`
  (`AGENT_RETRY_STRATEGY`, exponential backoff) instead of immediately;
- an exception that can never succeed on retry (`NonRetryableError` and subclasses, pydantic's
  `ValidationError`, `pydantic_ai.exceptions.UserError`, a result that is not JSON-serializable, or
  any type in `RetryPolicy.non_retryable`) fails the task at once, whatever attempts are left. The
  failure reason stored by Absurd (`failure_reason` JSON, what `fetch_task_result` returns) carries
  `"retryable": false` and `"non_retryable_reason"`. `absurd.retry_task(task_id)` still retries it
  by hand after a fix.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import pydantic
from absurd_sdk import AbsurdHooks, RetryStrategy, SpawnOptions
from pydantic_ai.exceptions import UserError

from .._absurd import chain_before_spawn
from .._text import storable, unstorable_json, unstorable_text_at, with_article
from ..errors import NonRetryableError, TaskResultNotSerializableError, validation_message

__all__ = [
    "AGENT_RETRY_STRATEGY",
    "DEFAULT_NON_RETRYABLE",
    "FailureOutcome",
    "NonRetryableError",
    "TaskResultNotSerializableError",
    "RetryPolicy",
    "agent_retry_hooks",
    "check_json_result",
    "failure_reason",
]

AGENT_RETRY_STRATEGY: RetryStrategy = {"kind": "exponential", "base_seconds": 5.0, "factor": 3.0, "max_seconds": 300.0}
"""Default retry strategy for agent tasks: 5 s, 15 s, 45 s, 135 s, then every 300 s.

With Absurd's default of 5 attempts a task rides out about 3.3 minutes of provider rate limiting or
outage before it fails, instead of failing five times within a second (Absurd's own default is an
immediate retry).
"""


DEFAULT_NON_RETRYABLE: tuple[type[BaseException], ...] = (NonRetryableError, pydantic.ValidationError, UserError)
"""Exception types that fail a task at once instead of being retried.

`pydantic.ValidationError` is listed because task parameters are JSON validated into a model at the
start of a handler: the same parameters fail the same way on every attempt. Code that validates
flaky external data inside a task should catch it and raise a retryable error instead.
"""


def failure_reason(err: BaseException, *, retryable: bool, reason: str | None = None) -> dict[str, Any]:
    """Build the `failure_reason` JSON stored on the failed run (the SDK's shape plus our fields)."""
    formatted = "".join(traceback.format_exception(type(err), err, err.__traceback__)) if err.__traceback__ else None
    # Messages may quote model or tool text; Postgres refuses NUL and lone surrogates in the jsonb column.
    payload: dict[str, Any] = {
        "name": type(err).__name__,
        "message": storable(validation_message(err)),
        "traceback": None if formatted is None else storable(formatted),
        "retryable": retryable,
    }
    if reason is not None:
        payload["non_retryable_reason"] = reason
    return payload


_ENCODER = json.JSONEncoder(ensure_ascii=False)
"""`json.dumps` with text left as is (NUL is still escaped): lone surrogates stay visible to `unstorable_json`."""


def check_json_result(task_name: str, result: object) -> None:
    """Raise `TaskResultNotSerializableError` if `result` cannot be stored by Absurd as the task result."""
    try:
        text = _ENCODER.encode(result)
    except (TypeError, ValueError) as err:
        raise TaskResultNotSerializableError(
            f"Task {task_name!r} returned {with_article(type(result).__name__)} that is not JSON-serializable ({err}); "
            "return JSON data (dict, list, str, int, float, bool, None), e.g. `model.model_dump(mode='json')`."
        ) from err
    if not unstorable_json(text):  # the common case: one scan of the JSON text, no walk of the result
        return
    where = unstorable_text_at(result, "result")
    if where is not None:
        raise TaskResultNotSerializableError(
            f"Task {task_name!r} returned text that Postgres cannot store ({where}); a task result may not "
            "hold NUL characters or lone surrogates: remove or escape them before returning."
        )


FailureOutcome = Literal["retry", "failed"]
"""What happened to a failed run: a new attempt was scheduled, or the task failed for good."""


@dataclass(frozen=True)
class RetryPolicy:
    """How the worker handles exceptions raised by task handlers.

    Attributes:
        default_strategy: Backoff applied to tasks spawned without a `retry_strategy`; None keeps
            Absurd's behaviour (immediate retry).
        non_retryable: Exception types that fail the task at once; subclasses match too.
    """

    default_strategy: RetryStrategy | None = field(default_factory=lambda: RetryStrategy(**AGENT_RETRY_STRATEGY))
    non_retryable: tuple[type[BaseException], ...] = DEFAULT_NON_RETRYABLE

    def non_retryable_reason(self, err: BaseException) -> str | None:
        """Why `err` can never succeed on retry (a short tag stored in the failure reason), or None."""
        if isinstance(err, TaskResultNotSerializableError):
            return "result_not_serializable"
        if isinstance(err, NonRetryableError):
            return "non_retryable_error"
        if not isinstance(err, self.non_retryable):
            return None
        if isinstance(err, pydantic.ValidationError):
            return "validation_error"
        if isinstance(err, UserError):
            return "user_error"
        return "non_retryable_type"


def agent_retry_hooks(hooks: AbsurdHooks | None = None, *, strategy: RetryStrategy | None = None) -> AbsurdHooks:
    """Hooks for `AsyncAbsurd(..., hooks=agent_retry_hooks())` that give spawned tasks a backoff by default.

    Every `spawn` without an explicit `retry_strategy` gets `strategy` (default `AGENT_RETRY_STRATEGY`),
    so the tasks back off whichever worker runs them (also Absurd's own `start_worker`). An existing
    `before_spawn` hook in `hooks` runs first (sync or async); other hooks are kept.

    Not needed with `run_worker`, which applies `RetryPolicy.default_strategy` to tasks without a
    strategy. A stored strategy also delays the retry after a worker crash (Absurd fails an
    expired claim with `$ClaimTimeout` and applies the task's strategy), so with `run_worker`
    prefer storing none.
    """
    chosen: RetryStrategy = strategy if strategy is not None else AGENT_RETRY_STRATEGY

    def with_strategy(options: SpawnOptions) -> SpawnOptions:
        if "retry_strategy" in options:
            return options
        return cast(SpawnOptions, {**options, "retry_strategy": dict(chosen)})

    return chain_before_spawn(hooks, with_strategy)
