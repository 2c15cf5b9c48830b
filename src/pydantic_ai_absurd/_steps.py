"""Every checkpoint this package writes: `run_step` and its parts.

`run_step` answers a step from the preloaded checkpoints on replay (checking the digest of what was
asked), runs the body under the lease keeper otherwise, and commits the checkpoint of a body that
returned even if the run is being torn down (`commit` is shielded). Test and verification hooks:
`commit_hook` (fault injection at each write) and `replay_only` (deploy verification: nothing executes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from absurd_sdk import AsyncTaskContext, StepHandle

from ._absurd import begin_step, give_up_retries, release_step_name
from ._checkpoint import Checkpoint
from ._digest import Asked, check_digest
from ._execution import (
    END_STATES,
    StepBody,
    bound,
    execution_state,
    remember_end,
    require_task_context,
    step_body_scope,
)
from .errors import ReplayDivergenceError, UnserializableResultError

__all__ = [
    "RetryAfterFailure",
    "StepOutcome",
    "begin",
    "commit",
    "commit_hook",
    "current_step_function",
    "refuse_live",
    "replay_only",
    "run_body",
    "run_step",
    "step_function",
]

_T = TypeVar("_T")


_step_function: ContextVar[object | None] = ContextVar("pydantic_ai_absurd.step_function", default=None)


def step_function(function: object | None) -> AbstractContextManager[None]:
    """Name the user function the step begun in this block runs (a tool's), for `verify` to point at."""
    return bound(_step_function, function)


def current_step_function() -> object | None:
    """The user function of the step being begun (`step_function`), if one was named."""
    return _step_function.get()


@dataclass(frozen=True)
class StepOutcome:
    """The value a step returned (decoded from its checkpoint), and whether its body ran now."""

    value: Any
    executed: bool
    checkpoint_name: str


_commit_hook: ContextVar[Callable[[str], Awaitable[None]] | None] = ContextVar(
    "pydantic_ai_absurd.commit_hook", default=None
)


def commit_hook(hook: Callable[[str], Awaitable[None]]) -> AbstractContextManager[None]:
    """Await `hook(checkpoint_name)` at the start of every checkpoint write (fault injection in tests)."""
    return bound(_commit_hook, hook)


_live_guard: ContextVar[Callable[[str | None], NoReturn] | None] = ContextVar(
    "pydantic_ai_absurd.live_guard", default=None
)


def replay_only(guard: Callable[[str | None], NoReturn]) -> AbstractContextManager[None]:
    """Run the code inside as a replay that executes nothing (deploy verification).

    Wherever a step body would run or a checkpoint would be written, `guard(checkpoint_name)` is called
    instead (the name is `None` where it is not known); it must raise. Replayed steps are unaffected.
    """
    return bound(_live_guard, guard)


def refuse_live(step: str | None) -> None:
    guard = _live_guard.get()
    if guard is not None:
        guard(step)


async def commit(task_ctx: AsyncTaskContext, handle: StepHandle, checkpoint: object) -> None:
    """Write a checkpoint, shielded: once a body has returned, only process death can lose its result.

    When the caller is cancelled meanwhile (a sibling tool failed and the run is being torn down), the
    write still finishes before the cancellation propagates.
    """
    refuse_live(handle.checkpoint_name)

    async def write() -> None:
        hook = _commit_hook.get()
        if hook is not None:
            await hook(handle.checkpoint_name)
        await task_ctx.complete_step(handle, checkpoint)

    task = asyncio.ensure_future(remember_end(task_ctx, write()))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        raise


async def begin(task_ctx: AsyncTaskContext, step: str) -> StepHandle:
    """Begin the step `step` (its checkpoint, if it has one), unless the execution has already ended."""
    execution_state(task_ctx).raise_if_ended()
    return await begin_step(task_ctx, step)


async def run_body(
    task_ctx: AsyncTaskContext, body: Callable[[], Awaitable[_T]], *, checkpoint_name: str | None = None
) -> _T:
    """Run a step body under the lease keeper, marked as a step body (agent runs inside join the step).

    `checkpoint_name` is the step's, for the code inside (`current_step()`); waits and sleeps give none.

    If Absurd reported an end state from inside this body and the body returned anyway, that end state is
    raised instead of the value.
    """
    refuse_live(None)
    state = execution_state(task_ctx)
    step_body = StepBody(checkpoint_name)

    async def in_body() -> _T:
        with step_body_scope(step_body):
            return await body()

    value = await state.lease.run(in_body)
    if state.ended is not None and state.ended_in is step_body:
        # The body swallowed Absurd's end state (`except Exception:` around a wait, say): its result is
        # not what the run would have produced, so it is never committed.
        raise state.ended
    return value


RetryAfterFailure = Callable[[Exception, str], Awaitable[bool]]
"""Called when a step body raised (with the error and the checkpoint name): wait and return True to run it again."""


async def run_step(
    step: str,
    body: Callable[[], Awaitable[object]],
    *,
    asked: Asked | None = None,
    on_unencodable: Callable[[BaseException, str], str | None] | None = None,
    retry: RetryAfterFailure | None = None,
) -> StepOutcome:
    """Run `body` as the Absurd step `step` of the current task, or replay its checkpoint.

    `asked` is checked against the digest recorded on replay and stored on the first run; a mismatch fails the
    task for good (`ReplayDivergenceError`, whichever worker runs it). When the body raises and
    `retry(error, checkpoint_name)` returns True, the body runs again as the same step (same checkpoint name).
    When `on_unencodable(error, checkpoint_name)` returns a message, that failure is checkpointed (retries raise
    it again without running the body) and raised as `UnserializableResultError`.
    """
    task_ctx = require_task_context()
    handle = await begin(task_ctx, step)
    if handle.done:
        await _check_digest(task_ctx, handle, asked)
        return StepOutcome(
            Checkpoint.read(handle.state).decode(step=handle.checkpoint_name), False, handle.checkpoint_name
        )
    refuse_live(handle.checkpoint_name)
    try:
        payload = await _run_body_retrying(task_ctx, body, handle.checkpoint_name, retry)
    except Exception as error:
        message = on_unencodable(error, handle.checkpoint_name) if on_unencodable is not None else None
        if message is None:
            if not isinstance(error, END_STATES):
                release_step_name(task_ctx, handle)  # a retry of this operation takes the same name, as a replay will
            raise
        await commit(task_ctx, handle, Checkpoint.failure(message).stored())
        raise UnserializableResultError(message) from error
    checkpoint = Checkpoint.of(payload, asked=asked)
    await commit(task_ctx, handle, checkpoint.stored())
    return StepOutcome(checkpoint.value, True, handle.checkpoint_name)


async def _run_body_retrying(
    task_ctx: AsyncTaskContext, body: Callable[[], Awaitable[_T]], checkpoint_name: str, retry: RetryAfterFailure | None
) -> _T:
    while True:
        try:
            return await run_body(task_ctx, body, checkpoint_name=checkpoint_name)
        except END_STATES:
            raise
        except Exception as error:
            if retry is None or not await retry(error, checkpoint_name):
                raise


async def _check_digest(task_ctx: AsyncTaskContext, handle: StepHandle, asked: Asked | None) -> None:
    try:
        check_digest(handle.state, asked, step=handle.checkpoint_name)
    except ReplayDivergenceError:
        if _live_guard.get() is None:  # deploy verification writes nothing
            await remember_end(task_ctx, give_up_retries(task_ctx))
        raise
