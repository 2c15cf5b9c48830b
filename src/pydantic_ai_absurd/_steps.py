"""Every checkpoint this package writes: `run_step` and its parts.

`run_step` answers a step from the preloaded checkpoints on replay (checking the digest of what was
asked), runs the body under the lease keeper otherwise, and commits the checkpoint of a body that
returned even if the run is being torn down (`commit` is shielded). Test and verification hooks:
`commit_hook` (fault injection at each write) and `replay_only` (deploy verification: nothing executes).

A tool step (`run_step(..., transactional=True)`) may hold one `durable_transaction()` block: its body then
leaves an open transaction in its `TransactionSlot`, and the checkpoint is written in that transaction and
committed with it (`_absurd.write_checkpoint_in`). A serialization failure or deadlock in the block or at that
commit runs the body again, as the same step, at most `CONFLICT_ATTEMPTS` times in all.

A model or tool step (`run_step(..., write_behind=True)`) returns its value while its checkpoint is still being
written: Pydantic AI prepares the next request meanwhile. Every step settles the writes in flight before it begins
(`begin`), and so does the end of a durable run (`settle_writes`), so no body ever runs before the checkpoints of
the steps that returned before it are committed, and a write that failed fails the run there.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import psycopg
from absurd_sdk import AsyncTaskContext, StepHandle

from ._absurd import (
    begin_step,
    give_up_retries,
    raise_end_state,
    release_step_name,
    remember_checkpoint,
    write_checkpoint_in,
)
from ._checkpoint import Checkpoint
from ._digest import Asked, check_digest
from ._execution import (
    END_STATES,
    StepBody,
    StepTransaction,
    TransactionSlot,
    bound,
    execution_state,
    remember_end,
    require_task_context,
    step_body_scope,
)
from ._pydantic_ai import is_journaled_failure
from .errors import ReplayDivergenceError, UnserializableResultError

__all__ = [
    "CONFLICT_ATTEMPTS",
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
    "settle_writes",
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


_committed_hook: ContextVar[Callable[[str], Awaitable[None]] | None] = ContextVar(
    "pydantic_ai_absurd.committed_hook", default=None
)


@contextmanager
def commit_hook(
    hook: Callable[[str], Awaitable[None]] | None, *, after: Callable[[str], Awaitable[None]] | None = None
) -> Generator[None]:
    """Await `hook(checkpoint_name)` at the start of every checkpoint write, `after(checkpoint_name)` once it committed.

    Fault injection in tests: a process killed in `hook` loses the write (and a tool's open transaction), one
    killed in `after` keeps it.
    """
    token = _commit_hook.set(hook)
    after_token = _committed_hook.set(after)
    try:
        yield
    finally:
        _committed_hook.reset(after_token)
        _commit_hook.reset(token)


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


async def commit(
    task_ctx: AsyncTaskContext,
    handle: StepHandle,
    checkpoint: object,
    *,
    within: StepTransaction | None = None,
    behind: bool = False,
) -> None:
    """Write a checkpoint, shielded: once a body has returned, only process death can lose its result.

    When the caller is cancelled meanwhile (a sibling tool failed and the run is being torn down), the
    write still finishes before the cancellation propagates. With `within`, the checkpoint is written in
    that open transaction (a tool's `durable_transaction()` block) and committed with it. With `behind`, the
    write is left in flight and this returns at once: the next `begin` (or `settle_writes`) awaits it.
    """
    refuse_live(handle.checkpoint_name)

    async def write() -> None:
        hook = _commit_hook.get()
        if hook is not None:
            await hook(handle.checkpoint_name)
        if within is None:
            await task_ctx.complete_step(handle, checkpoint)
        else:
            await _commit_within(task_ctx, handle.checkpoint_name, checkpoint, within)
        after = _committed_hook.get()
        if after is not None:
            await after(handle.checkpoint_name)

    task = asyncio.ensure_future(remember_end(task_ctx, write()))
    if behind:
        execution_state(task_ctx).writes.add(task)
        return
    await _settle({task})


async def settle_writes(task_ctx: AsyncTaskContext) -> None:
    """Wait until the checkpoint writes in flight are committed; raise the error of one that failed.

    Shielded like `commit`: when the caller is cancelled, the writes still finish before the cancellation
    propagates. A failed write stays in flight: every later step of the execution raises its error again.
    """
    writes = execution_state(task_ctx).writes
    while writes:
        settling = set(writes)  # every caller awaits them all (parallel tool calls begin together)
        await _settle(settling)
        writes.difference_update(settling)


async def _settle(writes: set[asyncio.Task[None]]) -> None:
    try:
        await asyncio.wait(writes)
    except asyncio.CancelledError:
        if not all(write.done() for write in writes):
            await asyncio.wait(writes)
        _failure(writes)  # marks each failure as retrieved
        raise
    failure = _failure(writes)
    if failure is not None:
        raise failure


def _failure(writes: set[asyncio.Task[None]]) -> BaseException | None:
    """The error of a write that failed (an end state first: it says why the others failed), if any."""
    errors = [error for write in writes if not write.cancelled() and (error := write.exception()) is not None]
    ended = [error for error in errors if isinstance(error, END_STATES)]
    return (ended or errors or [None])[0]


async def _commit_within(
    task_ctx: AsyncTaskContext, checkpoint_name: str, checkpoint: object, transaction: StepTransaction
) -> None:
    async def write(conn: psycopg.AsyncConnection[Any]) -> None:
        await write_checkpoint_in(conn, task_ctx, checkpoint_name, checkpoint)

    try:
        await transaction.commit_with(write)
    except psycopg.Error as error:
        raise_end_state(error)  # the run ended (lease lost, task cancelled): the transaction rolled back
        raise
    remember_checkpoint(task_ctx, checkpoint_name, checkpoint)


async def begin(task_ctx: AsyncTaskContext, step: str) -> StepHandle:
    """Begin the step `step` (its checkpoint, if it has one), unless the execution has already ended.

    The checkpoint writes still in flight are settled first.
    """
    await settle_writes(task_ctx)
    execution_state(task_ctx).raise_if_ended()
    return await begin_step(task_ctx, step)


async def run_body(
    task_ctx: AsyncTaskContext,
    body: Callable[[], Awaitable[_T]],
    *,
    checkpoint_name: str | None = None,
    transaction: TransactionSlot | None = None,
) -> _T:
    """Run a step body under the lease keeper, marked as a step body (agent runs inside join the step).

    `checkpoint_name` is the step's, for the code inside (`current_step()`); waits and sleeps give none.
    `transaction` is the slot a tool step's body may leave its `durable_transaction()` block in.

    If Absurd reported an end state from inside this body and the body returned anyway, that end state is
    raised instead of the value.
    """
    refuse_live(None)
    state = execution_state(task_ctx)
    step_body = StepBody(checkpoint_name, transaction)

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
    transactional: bool = False,
    write_behind: bool = False,
) -> StepOutcome:
    """Run `body` as the Absurd step `step` of the current task, or replay its checkpoint.

    `asked` is checked against the digest recorded on replay and stored on the first run; a mismatch fails the
    task for good (`ReplayDivergenceError`, whichever worker runs it). When the body raises and
    `retry(error, checkpoint_name)` returns True, the body runs again as the same step (same checkpoint name).
    When `on_unencodable(error, checkpoint_name)` returns a message, that failure is checkpointed (retries raise
    it again without running the body) and raised as `UnserializableResultError`. `transactional` marks a tool
    step, whose body may hold one `durable_transaction()` block (see the module docstring). With `write_behind`, the
    value is returned while its checkpoint is still being written (see the module docstring).
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
        checkpoint = await _run_and_commit(
            task_ctx, handle, body, asked, retry, transactional=transactional, behind=write_behind
        )
    except Exception as error:
        message = on_unencodable(error, handle.checkpoint_name) if on_unencodable is not None else None
        if message is None:
            if not isinstance(error, END_STATES):
                release_step_name(task_ctx, handle)  # a retry of this operation takes the same name, as a replay will
            raise
        await commit(task_ctx, handle, Checkpoint.failure(message).stored())
        raise UnserializableResultError(message) from error
    return StepOutcome(checkpoint.value, True, handle.checkpoint_name)


CONFLICT_ATTEMPTS = 5
"""How often a tool step whose `durable_transaction()` block hit a serialization failure or deadlock runs, at most."""


async def _run_and_commit(
    task_ctx: AsyncTaskContext,
    handle: StepHandle,
    body: Callable[[], Awaitable[object]],
    asked: Asked | None,
    retry: RetryAfterFailure | None,
    *,
    transactional: bool,
    behind: bool,
) -> Checkpoint:
    if not transactional:
        checkpoint = Checkpoint.of(await _run_body_retrying(task_ctx, body, handle.checkpoint_name, retry), asked=asked)
        await commit(task_ctx, handle, checkpoint.stored(), behind=behind)
        return checkpoint
    conflicts = 0
    while True:
        slot = TransactionSlot(handle.checkpoint_name)
        try:
            return await _run_transactional(task_ctx, handle, body, asked, slot, behind=behind)
        except END_STATES:
            raise
        except Exception:
            if slot.conflict is None or conflicts + 1 >= CONFLICT_ATTEMPTS:
                raise
            conflicts += 1
            await asyncio.sleep(min(1.0, 0.05 * 2 ** (conflicts - 1)) * random.uniform(0.5, 1.0))


async def _run_transactional(
    task_ctx: AsyncTaskContext,
    handle: StepHandle,
    body: Callable[[], Awaitable[object]],
    asked: Asked | None,
    slot: TransactionSlot,
    *,
    behind: bool,
) -> Checkpoint:
    """Run a tool step's body once and commit its checkpoint, in its `durable_transaction()` block's transaction if any."""
    try:
        payload = await run_body(task_ctx, body, checkpoint_name=handle.checkpoint_name, transaction=slot)
    except BaseException:
        if slot.pending is not None:
            await slot.pending.rollback()
        raise
    checkpoint = Checkpoint.of(payload, asked=asked)
    within = slot.pending
    if within is not None and is_journaled_failure(payload):
        await within.rollback()  # the tool raised `ModelRetry` (or the like) after its block: nothing is written
        within = None
    try:
        await commit(task_ctx, handle, checkpoint.stored(), within=within, behind=behind and within is None)
    except BaseException:
        if within is not None:
            await within.rollback()  # already rolled back when the commit itself failed
        raise
    return checkpoint


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
