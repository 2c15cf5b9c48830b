"""Where the current Absurd task execution is, and the state this package keeps per execution."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from absurd_sdk import AsyncTaskContext, TaskContext, get_current_context
from pydantic_ai.exceptions import UserError

from ._lease import LeaseKeeper

_in_step: ContextVar[bool] = ContextVar("pydantic_ai_absurd.in_step", default=False)


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


@dataclass
class ExecutionState:
    """Counters and the lease keeper of one execution of one task run (rebuilt on every replay)."""

    lease: LeaseKeeper
    run_ids: dict[str, int] = field(default_factory=dict[str, int])
    run_scopes: dict[str, int] = field(default_factory=dict[str, int])

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
    task_ctx = get_current_context()
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
        state = ExecutionState(lease=LeaseKeeper(task_ctx))
        _states[task_ctx] = state
    return state


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
