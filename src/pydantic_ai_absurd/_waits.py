"""Durable waits for external events (approvals, `HandleDeferredToolCalls`) inside one agent run, on Absurd events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from absurd_sdk import TimeoutError as AbsurdTimeoutError
from pydantic import JsonValue
from pydantic_ai.durable_exec import ExternalEventError, ExternalEventWaiter
from pydantic_ai.exceptions import UserError

from ._checkpoint import Checkpoint
from ._execution import RunScope, bound, remember_end
from ._step_names import ExternalEventStep, StepName, WaitPart
from ._steps import begin, commit, run_body
from ._text import storable

__all__ = [
    "TOKEN_PREFIX",
    "AbsurdEventWaiter",
    "CurrentWait",
    "current_wait",
    "fail_event_token",
    "resolve_event_token",
]

TOKEN_PREFIX = "pydantic-ai-absurd:"
"""Every resume token handed out by a durable run starts with this."""


@dataclass(frozen=True)
class CurrentWait:
    """The durable wait whose `ask` is running: its name and timeout (what `ask` itself is not given)."""

    name: str
    timeout: timedelta | None


_CURRENT_WAIT: ContextVar[CurrentWait | None] = ContextVar("pydantic_ai_absurd_current_wait", default=None)


def current_wait() -> CurrentWait | None:
    """The wait whose `ask` is running in this context, or None outside an `ask` of a durable wait."""
    return _CURRENT_WAIT.get()


class AbsurdEventWaiter(ExternalEventWaiter):
    """Waits on an Absurd event named by the resume token, suspending the task (no worker held) meanwhile.

    The token and the answer `ask` gave are one checkpoint; a timeout is journaled in a checkpoint of its
    own (Absurd does not journal it), so a replay neither asks again nor waits again.
    """

    def __init__(self, task_ctx: AsyncTaskContext, scope: RunScope) -> None:
        self._task_ctx = task_ctx
        self._scope = scope

    async def wait(
        self,
        name: str,
        *,
        ask: Callable[[str], Awaitable[JsonValue]],
        timeout: timedelta | None,
    ) -> JsonValue:
        """Hand a token to `ask` once, then return its answer or the payload the token is resolved with."""
        task_ctx = self._task_ctx
        scope = self._scope

        def step(part: WaitPart) -> str:
            return StepName(ExternalEventStep(name, part), scope.agent_name, scope.ordinal).format()

        handle = await begin(task_ctx, step("ask"))
        token = token_for(task_ctx, handle.checkpoint_name)
        if handle.done:
            answer = None if handle.state is None else Checkpoint.read(handle.state).decode(step=handle.checkpoint_name)
        else:
            with bound(_CURRENT_WAIT, CurrentWait(name, timeout)):
                answer = await run_body(task_ctx, lambda: ask(token))
            checkpoint = Checkpoint.of(answer)
            answer = checkpoint.value
            await commit(task_ctx, handle, checkpoint.stored())
        if answer is not None:
            return cast(JsonValue, answer)
        timed_out = await begin(task_ctx, step("timed_out"))
        if timed_out.done:
            raise ExternalEventError(f"Timed out waiting for {name!r}")
        seconds = None if timeout is None else max(int(timeout.total_seconds()), 1)
        try:
            payload = await remember_end(
                task_ctx, task_ctx.await_event(token, step_name=step("event"), timeout=seconds)
            )
        except AbsurdTimeoutError:
            await commit(task_ctx, timed_out, Checkpoint.of(True).stored())
            raise ExternalEventError(f"Timed out waiting for {name!r}") from None
        return event_payload(payload)


def token_for(task_ctx: AsyncTaskContext, checkpoint_name: str) -> str:
    """The resume token of the wait whose ask step is `checkpoint_name` in the task of `task_ctx`."""
    return f"{TOKEN_PREFIX}{task_ctx.task_id}:{checkpoint_name}"


def event_payload(payload: object) -> JsonValue:
    """The answer an event carries: this package's envelope, a failure, or a plain JSON payload."""
    sent = Checkpoint.read_sole(payload)
    if sent is None:
        return cast(JsonValue, payload)
    if sent.error is not None:
        raise ExternalEventError(sent.error)
    return cast(JsonValue, sent.value)


def _check_token(token: str) -> None:
    if not token.startswith(TOKEN_PREFIX):
        raise UserError(
            f"{token!r} is not a resume token handed out by a durable pydantic-ai-absurd run "
            f"(those start with {TOKEN_PREFIX!r})."
        )


async def resolve_event_token(
    absurd: AsyncAbsurd, token: str, payload: JsonValue, *, queue_name: str | None = None
) -> None:
    """Resume the durable run waiting on `token` (from `HandleDeferredToolCalls` or `wait_for_external_event`) with `payload`.

    Call it from any process, such as the web handler your approval UI posts to. The first resolution
    wins; later ones are ignored. `queue_name` defaults to the client's queue. A plain JSON payload sent
    with `absurd.emit_event(token, {...})` or `absurdctl emit-event` is accepted too.
    """
    _check_token(token)
    envelope = Checkpoint.of(payload).stored()
    await absurd.emit_event(token, cast(JsonValue, envelope), queue_name=queue_name)


async def fail_event_token(absurd: AsyncAbsurd, token: str, reason: str, *, queue_name: str | None = None) -> None:
    """End the durable wait on `token` with an `ExternalEventError` carrying `reason`."""
    _check_token(token)
    await absurd.emit_event(
        token, cast(JsonValue, Checkpoint.failure(storable(reason)).stored()), queue_name=queue_name
    )
