"""How layers plug into agent runs: the extension points of the core, which imports no layer.

The core (`AbsurdDurability`, the step runner, `AbsurdAgent`) knows nothing of conversations, the event
log or telemetry. They plug in here:

- A `DurableRunHook` wraps every durable agent run: `AbsurdDurability.wrap_run` enters
  `hook.durable_run(run)` around the run, in an Absurd task and outside any step, with the run's step
  scope installed. A capability's hooks are, outermost first: its event stream handler if that is a
  `DurableRunHook` (`publish_events()` starts the task's event log so), then the default hooks of
  `LAYERS` (the telemetry of the agent run span).
- A `RunExtension` wraps every run of an `AbsurdAgent`, durable or not: before the run it may change the
  run's keyword arguments, after it sees the result. `conversation_store=` is one: it loads the stored
  conversation for a run given `conversation_id=` and saves what the run added.
- `LAYERS` holds what the core needs from layers to honour its public arguments (`AbsurdAgent(...,
  conversation_store=..., publish_events=True)`) and methods (`register_task`, `run_as_child`: the
  `children` layer), and the default hooks. The package facade,
  `pydantic_ai_absurd/__init__.py`, which Python runs before any of its modules, fills it with functions
  that import their layer on first use.

The context variables holding run state are listed in `_execution`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from absurd_sdk import AsyncTaskContext
    from pydantic_ai.agent import EventStreamHandler
    from pydantic_ai.conversation_store import ConversationStore
    from pydantic_ai.run import AgentRunResult

    from ._agent import AbsurdAgent, ChildRunResult

__all__ = ["LAYERS", "AgentRunCall", "ChildTasks", "DurableRun", "DurableRunHook", "Layers", "RunExtension"]


@dataclass(frozen=True)
class DurableRun:
    """One durable agent run, as a `DurableRunHook` sees it."""

    task_ctx: AsyncTaskContext
    """The Absurd task the run is part of."""
    agent_name: str
    prefix: str
    """The agent segment of the run's step names (`name`, or `name~N` for the n-th run in the task)."""
    run_id: str | None


@runtime_checkable
class DurableRunHook(Protocol):
    """Wraps every durable agent run of a capability (see the module docstring)."""

    def durable_run(self, run: DurableRun) -> AbstractAsyncContextManager[None]:
        """The context the run runs in; it is entered before the run's first step and left after its last."""
        ...


@dataclass
class AgentRunCall:
    """One call of `AbsurdAgent.iter` (which `run` and the streaming methods use), as a `RunExtension` sees it."""

    agent_name: str
    durable: bool
    """Whether the run is durable: in an Absurd task, outside any step."""
    scope: str | None
    """The `scope=` given to `run` or `iter` (whose conversation it is)."""
    kwargs: dict[str, Any]
    """The keyword arguments the wrapped agent's `iter` gets; an extension may change them before the run."""
    result: AgentRunResult[Any] | None = None
    """The run's result once it finished (`None` for a run left early); read after the run."""


class RunExtension(Protocol):
    """Wraps every run of an `AbsurdAgent` (see the module docstring)."""

    def around_run(self, call: AgentRunCall) -> AbstractAsyncContextManager[None]:
        """The context the run runs in; a run that fails or is left early leaves it with that exception."""
        ...


class ChildTasks(Protocol):
    """`AbsurdAgent.register_task` / `run_as_child`: sub-agents as durable child tasks (the `children` layer)."""

    def register_task(self, agent: AbsurdAgent[Any, Any], name: str | None, queue: str | None) -> str:
        """Register the task that runs `agent` as a child; return its name."""
        ...

    async def run_as_child(self, agent: AbsurdAgent[Any, Any], user_prompt: Any, **options: Any) -> ChildRunResult[Any]:
        """Run `agent` as a child task of the current task (or spawn and poll outside one)."""
        ...


@dataclass
class Layers:
    """What the core needs from layers it does not import; filled by the package facade."""

    run_hooks: list[Callable[[], DurableRunHook]] = field(default_factory=lambda: [])
    """Makers of the hooks every `AbsurdDurability` uses, after its event stream handler's."""
    conversations: Callable[[ConversationStore, int | None], RunExtension] | None = None
    """`AbsurdAgent(conversation_store=, conversation_limit=)`: the extension that loads and saves conversations."""
    publishing: Callable[[EventStreamHandler[Any] | None], EventStreamHandler[Any]] | None = None
    """`AbsurdAgent(publish_events=True)`: the handler that appends every event to the task's event log."""
    children: ChildTasks | None = None
    """`AbsurdAgent.register_task()` / `run_as_child()`: child tasks."""


LAYERS = Layers()
"""The layers plugged into the core in this process (see `pydantic_ai_absurd/__init__.py`)."""
