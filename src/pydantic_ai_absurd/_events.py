"""Durable waits for external events (approvals, `RequestInput`) inside one agent run, on Absurd events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from absurd_sdk import TimeoutError as AbsurdTimeoutError
from pydantic import JsonValue
from pydantic_ai.durable_exec import ExternalEventError, ExternalEventWaiter
from pydantic_ai.exceptions import UserError

from ._backend import encode_checkpoint
from ._context import RunScope, execution_state, step_body_scope
from ._sdk_private import begin_step
from ._step_names import escape

TOKEN_PREFIX = "pydantic-ai-absurd:"
"""Every resume token handed out by a durable run starts with this."""

_VALUE_KEY = "json"
_ERROR_KEY = "error"


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
        base = f"{self._scope.prefix}__external_event:{escape(name)}"
        handle = await begin_step(task_ctx, base)
        token = f"{TOKEN_PREFIX}{task_ctx.task_id}:{handle.checkpoint_name}"
        if handle.done:
            answer = _decode(handle.state)
        else:

            async def call_ask() -> JsonValue:
                with step_body_scope():
                    return await ask(token)

            answer = await execution_state(task_ctx).lease.run(call_ask)
            await task_ctx.complete_step(handle, _encode(answer))
        if answer is not None:
            return answer
        timed_out = await begin_step(task_ctx, f"{base}.timed_out")
        if timed_out.done:
            raise ExternalEventError(f"Timed out waiting for {name!r}")
        seconds = None if timeout is None else max(int(timeout.total_seconds()), 1)
        try:
            payload = await task_ctx.await_event(token, step_name=f"{base}.event", timeout=seconds)
        except AbsurdTimeoutError:
            await task_ctx.complete_step(timed_out, True)
            raise ExternalEventError(f"Timed out waiting for {name!r}") from None
        if isinstance(payload, dict) and isinstance(reason := payload.get(_ERROR_KEY), str):
            raise ExternalEventError(reason)
        return _decode(payload)


def _encode(value: JsonValue) -> dict[str, JsonValue] | None:
    # Stored as JSON text like every checkpoint, so an answer replays with its keys in their original order.
    return None if value is None else dict(encode_checkpoint(value)[0])


def _decode(state: object) -> JsonValue:
    if isinstance(state, dict) and isinstance(text := state.get(_VALUE_KEY), str):  # pyright: ignore[reportUnknownMemberType,reportUnknownVariableType]
        return json.loads(text)
    return None


def _check_token(token: str) -> None:
    if not token.startswith(TOKEN_PREFIX):
        raise UserError(
            f"{token!r} is not a resume token handed out by a durable pydantic-ai-absurd run "
            f"(those start with {TOKEN_PREFIX!r})."
        )


async def resolve_event_token(
    absurd: AsyncAbsurd, token: str, payload: JsonValue, *, queue_name: str | None = None
) -> None:
    """Resume the durable run waiting on `token` (from `RequestInput` or `wait_for_external_event`) with `payload`.

    Call it from any process, such as the web handler your approval UI posts to. The first resolution
    wins; later ones are ignored. `queue_name` defaults to the client's queue.
    """
    _check_token(token)
    envelope: dict[str, JsonValue] = _encode(payload) or {_VALUE_KEY: "null"}
    await absurd.emit_event(token, envelope, queue_name=queue_name)


async def fail_event_token(absurd: AsyncAbsurd, token: str, reason: str, *, queue_name: str | None = None) -> None:
    """End the durable wait on `token` with an `ExternalEventError` carrying `reason`."""
    _check_token(token)
    await absurd.emit_event(token, {_ERROR_KEY: reason}, queue_name=queue_name)
