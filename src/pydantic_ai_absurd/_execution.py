"""One execution of an Absurd task run: where it is, the state kept for it, its lease, and its steps.

Every checkpoint this package writes goes through `run_step`: it answers a step from the preloaded
checkpoints on replay (checking the digest of what was asked), runs the body under the lease keeper
otherwise, and commits the checkpoint of a body that returned even if the run is being torn down.
Absurd's end states (`CancelledTask`, `FailedTask`, `SuspendTask`) are remembered for the execution
the first time any write reports them and raised again at every later step, so user code that
swallows them (`except Exception:`) cannot keep a finished run calling the model.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast
from weakref import WeakKeyDictionary

from absurd_sdk import AsyncTaskContext, CancelledTask, FailedTask, StepHandle, SuspendTask, TaskContext
from absurd_sdk import get_current_context as _sdk_current_context
from pydantic_ai.exceptions import UserError

from . import _checkpoint
from ._absurd import begin_step, claim_timeout_of
from ._checkpoint import Asked, DigestChain
from .errors import UnserializableResultError

__all__ = [
    "END_STATES",
    "ExecutionState",
    "LeaseKeeper",
    "RunScope",
    "current_run_scope",
    "current_step",
    "current_task_context",
    "execution_state",
    "in_step",
    "keep_lease",
    "remember_end",
    "replay_only",
    "require_task_context",
    "run_scope",
    "run_step",
    "step_body_scope",
]

_T = TypeVar("_T")

logger = logging.getLogger("pydantic_ai_absurd.lease")

END_STATES: tuple[type[BaseException], ...] = (CancelledTask, FailedTask, SuspendTask)
"""Absurd's exceptions that end an execution: the task was cancelled, the run failed elsewhere, or it suspended."""

MIN_HEARTBEAT_INTERVAL = 0.2
"""Seconds; heartbeats are never sent more often than this, whatever the claim timeout."""

_in_step: ContextVar[bool] = ContextVar("pydantic_ai_absurd.in_step", default=False)
_body_id: ContextVar[object | None] = ContextVar("pydantic_ai_absurd.body_id", default=None)


@dataclass(frozen=True)
class RunScope:
    """Which agent run of a task execution a step belongs to: the agent's name and its 1-based ordinal."""

    agent_name: str
    ordinal: int

    @property
    def prefix(self) -> str:
        """The agent segment of this run's step names: the name for the first run, `name~N` for later ones."""
        return self.agent_name if self.ordinal == 1 else f"{self.agent_name}~{self.ordinal}"


_run_scope: ContextVar[RunScope | None] = ContextVar("pydantic_ai_absurd.run_scope", default=None)


class LeaseKeeper:
    """Heartbeats one task run's claim while it holds work: a step body, or the whole execution.

    Absurd extends a claim only when a checkpoint is written or `heartbeat()` is called. A model or tool
    call longer than the claim timeout would let another worker claim the task and run the same step
    again. One keeper serves a whole task execution (all its parallel steps, and the worker's hold on
    the execution itself): it sends one heartbeat every third of the claim timeout while anything is
    held. When a heartbeat reports that the task was cancelled or the run has failed, it remembers that
    end state, cancels every running body and makes each step raise that Absurd exception.

    The keeper owns the bodies it starts: when the caller of `run` is cancelled, the body is cancelled
    and awaited before `run` returns, so no body of a handed-back run still runs when another worker
    starts the same step. A synchronous tool running in a thread cannot be interrupted; `run` waits for it.
    """

    def __init__(self, task_ctx: AsyncTaskContext, state: ExecutionState | None = None) -> None:
        self._task_ctx = task_ctx
        self._state = state
        self._bodies: set[asyncio.Task[Any]] = set()
        self._holds = 0
        self._held_tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended: BaseException | None = None

    @property
    def interval(self) -> float:
        """Seconds between two heartbeats."""
        return max(claim_timeout_of(self._task_ctx) / 3, MIN_HEARTBEAT_INTERVAL)

    @property
    def ended(self) -> BaseException | None:
        """The Absurd end state a heartbeat or write reported, if any."""
        return self._state.ended if self._state is not None else self._ended

    def _end(self, ended: BaseException) -> None:
        if self._state is not None:
            self._state.end(ended)
        elif self._ended is None:
            self._ended = ended

    async def run(self, body: Callable[[], Awaitable[_T]]) -> _T:
        """Run `body` with the claim kept alive; raise Absurd's exception if the run ends meanwhile."""
        ended = self.ended
        if ended is not None:
            raise ended

        async def call() -> _T:
            return await body()

        task: asyncio.Task[_T] = asyncio.ensure_future(call())
        self._bodies.add(task)
        self._acquire()
        try:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})  # own the body: it has stopped before we return
                ended = self.ended
                current = asyncio.current_task()
                if ended is not None and (current is None or current.cancelling() == 0):
                    raise ended from None
                raise
        finally:
            self._bodies.discard(task)
            self._release()

    @asynccontextmanager
    async def hold(self) -> AsyncGenerator[None]:
        """Keep the claim alive for the code inside (the worker holds a whole execution this way).

        When a heartbeat reports an end state while no step body runs, the holding task is cancelled.
        """
        current = asyncio.current_task()
        if current is not None:
            self._held_tasks.add(current)
        self._acquire()
        try:
            yield
        finally:
            self._release()
            if current is not None:
                self._held_tasks.discard(current)

    def _acquire(self) -> None:
        self._holds += 1
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())

    def _release(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._task_ctx.heartbeat()
            except (CancelledTask, FailedTask) as ended:
                self._end(ended)
                targets = list(self._bodies) or list(self._held_tasks)
                for target in targets:
                    target.cancel()
                return
            except Exception:
                # The next checkpoint write reports a lost connection; a missed heartbeat alone is not fatal.
                logger.warning("Heartbeat for task %s failed", self._task_ctx.task_id, exc_info=True)


@dataclass
class ExecutionState:
    """Counters, end state and lease keeper of one execution of one task run (rebuilt on every replay)."""

    task_ctx: AsyncTaskContext
    """A weak proxy of the context (states are values of a `WeakKeyDictionary` keyed by it)."""
    run_ids: dict[str, int] = field(default_factory=dict[str, int])
    run_scopes: dict[str, int] = field(default_factory=dict[str, int])
    digest_chains: dict[str, DigestChain] = field(default_factory=dict[str, DigestChain])
    """Per agent run (by step-name prefix): the chain that makes model-request digests incremental."""
    ended: BaseException | None = None
    ended_in: object | None = None
    """The step body the end state surfaced in (that body's result must not be committed), if any."""
    lease: LeaseKeeper = field(init=False)

    def __post_init__(self) -> None:
        self.lease = LeaseKeeper(self.task_ctx, self)

    def end(self, ended: BaseException) -> None:
        """Remember the first end state Absurd reported for this execution."""
        if self.ended is None:
            self.ended = ended
            self.ended_in = _body_id.get()

    def raise_if_ended(self) -> None:
        """Raise the remembered end state again: nothing more may run in this execution."""
        if self.ended is not None:
            raise self.ended

    def next_run_id_ordinal(self, agent_name: str) -> int:
        ordinal = self.run_ids.get(agent_name, 0) + 1
        self.run_ids[agent_name] = ordinal
        return ordinal

    def next_run_scope(self, agent_name: str) -> RunScope:
        ordinal = self.run_scopes.get(agent_name, 0) + 1
        self.run_scopes[agent_name] = ordinal
        return RunScope(agent_name, ordinal)


_states: WeakKeyDictionary[AsyncTaskContext, ExecutionState] = WeakKeyDictionary()


def current_task_context() -> AsyncTaskContext | None:
    """The async Absurd task context of the running task, or `None` outside a task.

    A synchronous `TaskContext` is refused: an agent run is async, and a sync handler would block the
    worker's event loop while the durable steps need an `AsyncAbsurd` connection.
    """
    task_ctx = _sdk_current_context()
    if task_ctx is None:
        return None
    if isinstance(task_ctx, TaskContext):
        raise UserError(
            "AbsurdAgent runs need an async Absurd task: register the handler on an `AsyncAbsurd` client "
            "with `@absurd.register_task(...)` and make it `async def`. This task runs on a sync `Absurd` "
            "client, whose `TaskContext` cannot checkpoint async model and tool calls."
        )
    return task_ctx


def require_task_context() -> AsyncTaskContext:
    """The async Absurd task context, which a durable step cannot run without."""
    task_ctx = current_task_context()
    if task_ctx is None:
        raise UserError("A durable Absurd step ran outside an Absurd task; this is a bug in pydantic-ai-absurd.")
    return task_ctx


def execution_state(task_ctx: AsyncTaskContext) -> ExecutionState:
    """The state this package keeps for `task_ctx`, created on first use."""
    state = _states.get(task_ctx)
    if state is None:
        state = ExecutionState(cast(AsyncTaskContext, weakref.proxy(task_ctx)))
        _states[task_ctx] = state
    return state


@asynccontextmanager
async def keep_lease(task_ctx: AsyncTaskContext) -> AsyncGenerator[None]:
    """Heartbeat `task_ctx`'s claim for as long as the code inside runs (the worker wraps executions in it)."""
    async with execution_state(task_ctx).lease.hold():
        yield


async def remember_end(task_ctx: AsyncTaskContext, write: Awaitable[_T]) -> _T:
    """Await one write of the task (`complete_step`, `await_event`, ...), remembering an end state it raises."""
    try:
        return await write
    except END_STATES as ended:
        execution_state(task_ctx).end(ended)
        raise


_current_step: ContextVar[str | None] = ContextVar("pydantic_ai_absurd.current_step", default=None)


def current_step() -> str | None:
    """The checkpoint name of the step whose body the current code runs in (`run_step` bodies), else `None`."""
    return _current_step.get()


def in_step() -> bool:
    """Whether the current code runs inside a durable step's body."""
    return _in_step.get()


@contextmanager
def step_body_scope() -> Generator[None]:
    """Mark the code inside as a step body: agent runs started there become part of the step."""
    token = _in_step.set(True)
    try:
        yield
    finally:
        _in_step.reset(token)


def current_run_scope() -> RunScope | None:
    """The run scope installed by the durable agent run the current code belongs to."""
    return _run_scope.get()


@contextmanager
def run_scope(scope: RunScope) -> Generator[None]:
    """Install `scope` for the steps of one durable agent run."""
    token = _run_scope.set(scope)
    try:
        yield
    finally:
        _run_scope.reset(token)


@dataclass(frozen=True)
class StepOutcome:
    """The value a step returned (decoded from its checkpoint), and whether its body ran now."""

    value: Any
    executed: bool
    checkpoint_name: str


_commit_hook: ContextVar[Callable[[str], Awaitable[None]] | None] = ContextVar(
    "pydantic_ai_absurd.commit_hook", default=None
)


@contextmanager
def commit_hook(hook: Callable[[str], Awaitable[None]]) -> Generator[None]:
    """Await `hook(checkpoint_name)` at the start of every checkpoint write (fault injection in tests)."""
    token = _commit_hook.set(hook)
    try:
        yield
    finally:
        _commit_hook.reset(token)


_live_guard: ContextVar[Callable[[str | None], NoReturn] | None] = ContextVar(
    "pydantic_ai_absurd.live_guard", default=None
)


@contextmanager
def replay_only(guard: Callable[[str | None], NoReturn]) -> Generator[None]:
    """Run the code inside as a replay that executes nothing (deploy verification).

    Wherever a step body would run or a checkpoint would be written, `guard(checkpoint_name)` is called
    instead (the name is `None` where it is not known); it must raise. Replayed steps are unaffected.
    """
    token = _live_guard.set(guard)
    try:
        yield
    finally:
        _live_guard.reset(token)


def _refuse_live(step: str | None) -> None:
    guard = _live_guard.get()
    if guard is not None:
        guard(step)


async def commit(task_ctx: AsyncTaskContext, handle: StepHandle, checkpoint: object) -> None:
    """Write a checkpoint, shielded: once a body has returned, only process death can lose its result.

    When the caller is cancelled meanwhile (a sibling tool failed and the run is being torn down), the
    write still finishes before the cancellation propagates.
    """
    _refuse_live(handle.checkpoint_name)

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


async def run_body(task_ctx: AsyncTaskContext, body: Callable[[], Awaitable[_T]]) -> _T:
    """Run a step body under the lease keeper, marked as a step body (agent runs inside join the step).

    If Absurd reported an end state from inside this body and the body returned anyway, that end state is
    raised instead of the value.
    """
    _refuse_live(None)
    state = execution_state(task_ctx)
    body_id = object()

    async def in_body() -> _T:
        token = _body_id.set(body_id)
        try:
            with step_body_scope():
                return await body()
        finally:
            _body_id.reset(token)

    value = await state.lease.run(in_body)
    if state.ended is not None and state.ended_in is body_id:
        # The body swallowed Absurd's end state (`except Exception:` around a wait, say): its result is
        # not what the run would have produced, so it is never committed.
        raise state.ended
    return value


async def run_step(
    step: str,
    body: Callable[[], Awaitable[object]],
    *,
    asked: Asked | None = None,
    on_unencodable: Callable[[BaseException, str], str | None] | None = None,
) -> StepOutcome:
    """Run `body` as the Absurd step `step` of the current task, or replay its checkpoint.

    `asked` is checked against the digest recorded on replay and stored on the first run. When the body
    raises and `on_unencodable(error, checkpoint_name)` returns a message, that failure is checkpointed
    (retries raise it again without running the body) and raised as `UnserializableResultError`.
    """
    task_ctx = require_task_context()
    handle = await begin(task_ctx, step)
    if handle.done:
        _checkpoint.check_digest(handle.state, asked, step=handle.checkpoint_name)
        return StepOutcome(_checkpoint.decode(handle.state, step=handle.checkpoint_name), False, handle.checkpoint_name)
    _refuse_live(handle.checkpoint_name)
    step_token = _current_step.set(handle.checkpoint_name)
    try:
        payload = await run_body(task_ctx, body)
    except Exception as error:
        message = on_unencodable(error, handle.checkpoint_name) if on_unencodable is not None else None
        if message is None:
            raise
        await commit(task_ctx, handle, _checkpoint.encode_error(message))
        raise UnserializableResultError(message) from error
    finally:
        _current_step.reset(step_token)
    checkpoint, value = _checkpoint.encode(payload, asked=asked)
    await commit(task_ctx, handle, checkpoint)
    return StepOutcome(value, True, handle.checkpoint_name)
