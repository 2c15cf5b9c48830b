"""One execution of an Absurd task run: where it is, and the state kept for it.

Absurd's end states (`CancelledTask`, `FailedTask`, `SuspendTask`) are remembered for the execution
the first time any write reports them (`remember_end`) and raised again at every later step, so user
code that swallows them (`except Exception:`) cannot keep a finished run calling the model. Steps
themselves are written by `_steps.run_step`; the claim is kept alive by `_lease.LeaseKeeper`.

Run state is passed as arguments where the code that needs it is called by this package. Where Pydantic
AI or user code stands in between, it is kept in one of these (the package's only ones; each context
variable is set for a block with `bound`):

| Variable                        | Holds                                                  | Set by                      |
|---------------------------------|--------------------------------------------------------|-----------------------------|
| `_execution._states`            | `ExecutionState` per task context (a weak dictionary)  | `execution_state()`         |
| `_execution._step_body`         | the step body running: `in_step()`, `current_step()`   | `_steps.run_body`           |
| `_execution._run_scope`         | the durable agent run steps belong to (`RunScope`)     | `AbsurdDurability.wrap_run` |
| `_steps._step_function`         | the user function of the step being begun (verify)     | `_backend` (`step_function`)|
| `_steps._commit_hook`           | a hook before every checkpoint write (tests' faults)   | `commit_hook()`             |
| `_steps._committed_hook`        | a hook after every checkpoint write (tests' faults)    | `commit_hook(after=...)`    |
| `_steps._live_guard`            | replay-only mode: nothing may run or be written        | `verify` (`replay_only`)    |
| `_waits._CURRENT_WAIT`          | the durable wait whose `ask` runs (name, timeout)      | `AbsurdEventWaiter`         |
| `_agent._run_scope_arg`         | `AbsurdAgent.run(scope=...)` for the `iter` it calls   | `AbsurdAgent.run`           |
| `_agent._agent_client`          | the Absurd client of the running `AbsurdAgent`         | `AbsurdAgent.iter`          |
| `conversations._store._turn_id` | the durable turn whose save runs (exactly-once save)   | `_store.saving_turn`        |

Work a layer does once per execution is kept in `ExecutionState.once`; a process-wide cache,
`events._writer._triggers_installed`, remembers the queues whose event triggers are installed.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast
from weakref import WeakKeyDictionary

import psycopg
from absurd_sdk import AsyncTaskContext, CancelledTask, FailedTask, SuspendTask, TaskContext
from absurd_sdk import get_current_context as _sdk_current_context
from pydantic_ai.exceptions import UserError

from ._digest import DigestChain
from ._lease import LeaseKeeper
from ._step_names import run_prefix

__all__ = [
    "END_STATES",
    "ExecutionState",
    "RunScope",
    "StepBody",
    "bound",
    "StepTransaction",
    "TransactionSlot",
    "current_run_scope",
    "current_step",
    "current_step_body",
    "current_task_context",
    "execution_state",
    "in_step",
    "remember_end",
    "require_task_context",
    "run_scope",
    "step_body_scope",
]

_T = TypeVar("_T")

END_STATES: tuple[type[BaseException], ...] = (CancelledTask, FailedTask, SuspendTask)
"""Absurd's exceptions that end an execution: the task was cancelled, the run failed elsewhere, or it suspended."""


@dataclass(eq=False)
class TransactionSlot:
    """Where a tool step's body leaves its open database transaction, to be committed with its checkpoint.

    Created by `_steps.run_step` for each run of a tool step's body. The transactions layer
    (`pydantic_ai_absurd.transactions`) sets `pending` when a `durable_transaction()` block exits with its
    statements uncommitted, and `conflict` when the block (or the commit) failed on a serialization failure
    or deadlock: the step then runs its body again.
    """

    checkpoint_name: str
    pending: StepTransaction | None = None
    used: bool = False
    """Whether a block was opened in this body (at most one may be)."""
    conflict: BaseException | None = None


class StepTransaction(Protocol):
    """An open transaction a tool step commits together with its checkpoint (see `TransactionSlot`)."""

    async def commit_with(self, write: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]) -> None:
        """Run `write(conn)` (the checkpoint write) in the transaction, then commit it; roll back if either fails."""
        ...

    async def rollback(self) -> None:
        """Roll the transaction back and give its connection back (idempotent)."""
        ...


@dataclass(frozen=True, eq=False)
class StepBody:
    """One run of a step's body; compared by identity, so an end state that surfaces in it is known as its own."""

    checkpoint_name: str | None
    """The checkpoint name of the step (`None` for the bodies of waits and sleeps, which publish no events)."""
    transaction: TransactionSlot | None = None
    """Set for the body of a tool step, which may hold one `durable_transaction()` block."""


_step_body: ContextVar[StepBody | None] = ContextVar("pydantic_ai_absurd.step_body", default=None)


@dataclass(frozen=True)
class RunScope:
    """Which agent run of a task execution a step belongs to: the agent's name and its 1-based ordinal."""

    agent_name: str
    ordinal: int

    @property
    def prefix(self) -> str:
        """The agent segment of this run's step names: the name for the first run, `name~N` for later ones."""
        return run_prefix(self.agent_name, self.ordinal)


_run_scope: ContextVar[RunScope | None] = ContextVar("pydantic_ai_absurd.run_scope", default=None)


@dataclass
class ExecutionState:
    """Counters, end state and lease keeper of one execution of one task run (rebuilt on every replay)."""

    task_ctx: AsyncTaskContext
    """A weak proxy of the context (states are values of a `WeakKeyDictionary` keyed by it)."""
    run_ids: dict[str, int] = field(default_factory=lambda: {})
    run_scopes: dict[str, int] = field(default_factory=lambda: {})
    digest_chains: dict[str, DigestChain] = field(default_factory=lambda: {})
    """Per agent run (by step-name prefix): the chain that makes model-request digests incremental."""
    once: dict[str, asyncio.Future[None]] = field(default_factory=lambda: {})
    """Work a layer does once per execution, by key (the event log's start): later callers await the first."""
    ended_in: StepBody | None = None
    """The step body the end state surfaced in (that body's result must not be committed), if any."""
    writes: set[asyncio.Task[None]] = field(default_factory=lambda: set())
    """Checkpoint writes in flight (`_steps.commit(..., behind=True)`), settled before the next step begins."""
    lease: LeaseKeeper = field(init=False)

    def __post_init__(self) -> None:
        self.lease = LeaseKeeper(self.task_ctx, on_end=self._note_body)

    @property
    def ended(self) -> BaseException | None:
        """The first end state Absurd reported for this execution (kept by the lease keeper), if any."""
        return self.lease.ended

    def end(self, ended: BaseException) -> None:
        """Remember the first end state Absurd reported for this execution."""
        self.lease.end(ended)

    def _note_body(self) -> None:
        self.ended_in = _step_body.get()

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


async def remember_end(task_ctx: AsyncTaskContext, write: Awaitable[_T]) -> _T:
    """Await one write of the task (`complete_step`, `await_event`, ...), remembering an end state it raises."""
    try:
        return await write
    except END_STATES as ended:
        execution_state(task_ctx).end(ended)
        raise


def in_step() -> bool:
    """Whether the current code runs inside a durable step's body."""
    return _step_body.get() is not None


def current_step() -> str | None:
    """The checkpoint name of the step whose body the current code runs in, else `None`."""
    body = _step_body.get()
    return body.checkpoint_name if body is not None else None


def current_step_body() -> StepBody | None:
    """The step body the current code runs in, else `None`."""
    return _step_body.get()


@contextmanager
def bound(variable: ContextVar[_T], value: _T) -> Generator[None]:
    """Set the context variable `variable` to `value` for the code inside (how every one in the table is set)."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def step_body_scope(body: StepBody) -> AbstractContextManager[None]:
    """Mark the code inside as the step body `body`: agent runs started there become part of the step."""
    return bound(_step_body, body)


def current_run_scope() -> RunScope | None:
    """The run scope installed by the durable agent run the current code belongs to."""
    return _run_scope.get()


def run_scope(scope: RunScope) -> AbstractContextManager[None]:
    """Install `scope` for the steps of one durable agent run."""
    return bound(_run_scope, scope)
