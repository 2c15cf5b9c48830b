"""`AbsurdAgent`: wrap an existing agent so its runs are durable inside Absurd tasks.

Its conversation and event-log arguments are served by layers this module does not import: it asks
`_extensions.LAYERS` for them (see there).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, overload

from absurd_sdk import AsyncAbsurd
from pydantic_ai.agent import AbstractAgent, Agent, AgentRun, EventStreamHandler, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.conversation_store import ConversationStore
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, UserContent
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT, OutputSpec
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT
from pydantic_ai.usage import RunUsage

from ._durability import AbsurdDurability
from ._execution import bound
from ._extensions import LAYERS, AgentRunCall, RunExtension
from ._provider_waits import DEFAULT_MAX_PROVIDER_WAIT
from ._time import DEFAULT_SUSPEND_THRESHOLD

_run_scope_arg: ContextVar[str | None] = ContextVar("pydantic_ai_absurd.run_scope_arg", default=None)
_agent_client: ContextVar[AsyncAbsurd | None] = ContextVar("pydantic_ai_absurd.agent_client", default=None)


def current_agent_client() -> AsyncAbsurd | None:
    """The Absurd client of the `AbsurdAgent` whose run the current code is part of, if it was given one."""
    return _agent_client.get()


"""The `scope=` given to `AbsurdAgent.run`, read by the `iter` it calls (`Agent.run` passes on no extra argument)."""


@dataclass(frozen=True)
class ChildRunResult(Generic[OutputDataT]):
    """What `AbsurdAgent.run_as_child` returns: the child run's output, usage, task and new messages."""

    output: OutputDataT
    """The child agent's output, validated into its `output_type`."""
    usage: RunUsage
    """The child run's usage (its own model requests; a child's children are not included)."""
    task_id: str
    """The child task's id (`inspect_task` shows its steps)."""
    messages: list[ModelMessage]
    """The messages the child run added (its new messages)."""


class AbsurdAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """An agent whose runs are durable inside Absurd tasks and plain everywhere else.

    `run`, `run_stream`, `run_stream_events` and `iter` inside an `@absurd.register_task` handler checkpoint
    every model, tool and MCP call as an Absurd step; outside a task the agent writes nothing and needs no
    database.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[AgentDepsT, OutputDataT],
        absurd: AsyncAbsurd | None = None,
        *,
        name: str | None = None,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        conversation_store: ConversationStore | None = None,
        conversation_limit: int | None = None,
        publish_events: bool = False,
        suspend_threshold: float = DEFAULT_SUSPEND_THRESHOLD,
        max_provider_wait: float = DEFAULT_MAX_PROVIDER_WAIT,
    ) -> None:
        """Wrap `wrapped`.

        Args:
            wrapped: The agent to make durable. It needs a `name` (or pass `name=`): step names use it.
            absurd: The Absurd client the agent's tasks run on, kept for helpers (`agent.absurd`).
            name: Overrides the agent's name in step names.
            models: Extra models runs may select with `run(model=...)`, keyed by ID.
            event_stream_handler: A durable event stream handler (each tool event is a step of its own).
            conversation_store: Where conversations live: a run given `conversation_id=` loads it from here (or
                starts it) and saves what it added; inside a task the load and the save are steps.
            conversation_limit: Load only the last `conversation_limit` messages of a stored conversation for
                each run (the save still appends to the whole conversation). Default: all of them.
            publish_events: Append every event of a durable run (and status events) to the task's event
                log in Postgres, live, for `stream_events()` / `event_stream_response()` in any process.
            suspend_threshold: Seconds from which a wait suspends the task in Postgres instead of sleeping in
                the worker (see [`AbsurdDurability`][pydantic_ai_absurd.AbsurdDurability]). Default 5.
            max_provider_wait: Seconds one model request may wait in all for a provider's retry-after before
                its error fails the run (see [`AbsurdDurability`][pydantic_ai_absurd.AbsurdDurability]). Default 900.
        """
        super().__init__(wrapped)
        agent_name = name or wrapped.name
        if not agent_name:
            raise UserError(
                "AbsurdAgent needs an agent with a unique `name` (or `AbsurdAgent(..., name=...)`): it is part "
                "of every persisted step name, so a resumed run can find its checkpoints."
            )
        self._absurd = absurd
        self._conversation_store = conversation_store
        self._extensions: tuple[RunExtension, ...] = ()
        if conversation_store is not None:
            assert LAYERS.conversations is not None, "wired by pydantic_ai_absurd/__init__.py"
            self._extensions = (LAYERS.conversations(conversation_store, conversation_limit),)
        if publish_events:
            assert LAYERS.publishing is not None, "wired by pydantic_ai_absurd/__init__.py"
            event_stream_handler = LAYERS.publishing(event_stream_handler)
        self._durability = AbsurdDurability[AgentDepsT](
            name=agent_name,
            models=models,
            event_stream_handler=event_stream_handler,
            suspend_threshold=suspend_threshold,
            max_provider_wait=max_provider_wait,
        )

    @property
    def absurd(self) -> AsyncAbsurd | None:
        """The Absurd client passed at construction."""
        return self._absurd

    @property
    def tool(self) -> Any:
        """The wrapped `Agent`'s `tool` decorator: `@agent.tool` registers a tool (taking `RunContext`) on it."""
        return self._wrapped_agent("tool").tool

    @property
    def tool_plain(self) -> Any:
        """The wrapped `Agent`'s `tool_plain` decorator: `@agent.tool_plain` registers a tool on it."""
        return self._wrapped_agent("tool_plain").tool_plain

    def _wrapped_agent(self, decorator: str) -> Agent[AgentDepsT, OutputDataT]:
        if not isinstance(self.wrapped, Agent):
            raise UserError(
                f"`@agent.{decorator}` needs an AbsurdAgent that wraps a `pydantic_ai.Agent`; this one wraps a "
                f"{type(self.wrapped).__name__}: register the tool on that agent instead."
            )
        return self.wrapped

    @property
    def durability(self) -> AbsurdDurability[AgentDepsT]:
        """The capability added to each run."""
        return self._durability

    @property
    def conversation_store(self) -> ConversationStore | None:
        """The store runs given `conversation_id=` load their conversation from and save it to."""
        return self._conversation_store

    @overload
    async def run(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        output_type: None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> AgentRunResult[OutputDataT]: ...

    @overload
    async def run(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        output_type: OutputSpec[Any],
        scope: str | None = None,
        **kwargs: Any,
    ) -> AgentRunResult[Any]: ...

    async def run(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, *args: Any, scope: str | None = None, **kwargs: Any
    ) -> AgentRunResult[Any]:
        """Run the agent; with a `conversation_store` and `conversation_id=`, continue that stored conversation.

        `scope` (whose conversation it is, e.g. a user or tenant ID) is passed to the store's load and save.
        """
        with bound(_run_scope_arg, scope):
            return await super().run(*args, **kwargs)

    @asynccontextmanager
    async def iter(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        *args: Any,
        capabilities: Sequence[AbstractCapability[AgentDepsT]] | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[AgentRun[AgentDepsT, Any]]:
        """Iterate over the run's nodes, with the durability capability added to the run.

        The agent's run extensions (a `conversation_store`) are entered around the run.
        """
        call = AgentRunCall(
            agent_name=self._durability.name,
            durable=self._durability.in_durable_context,
            scope=scope if scope is not None else _run_scope_arg.get(),
            kwargs=kwargs,
        )
        async with AsyncExitStack() as extensions:
            if self._absurd is not None:
                client_token = _agent_client.set(self._absurd)
                extensions.callback(_agent_client.reset, client_token)
            for extension in self._extensions:
                await extensions.enter_async_context(extension.around_run(call))
            capabilities = [*(capabilities or ()), self._durability]
            async with self.wrapped.iter(*args, capabilities=capabilities, **call.kwargs) as run:
                yield run
            call.result = run.result

    def register_task(self, name: str | None = None, *, queue: str | None = None) -> str:
        """Register an Absurd task on `absurd` that runs this agent, for `run_as_child`; returns the task name.

        Call it at import time in every process that runs workers for it (and in the processes that spawn it,
        so `run_as_child` finds its queue).

        Args:
            name: The task name. Default: the agent's name.
            queue: The queue the task runs on. Default: the Absurd client's.
        """
        assert LAYERS.children is not None, "wired by pydantic_ai_absurd/__init__.py"
        return LAYERS.children.register_task(self, name, queue)

    async def run_as_child(
        self,
        user_prompt: str | Sequence[UserContent] | None = None,
        *,
        message_history: Sequence[ModelMessage] | None = None,
        metadata: dict[str, Any] | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
    ) -> ChildRunResult[OutputDataT]:
        """Run this agent as a child task of the current task, on any worker, and return its result.

        Inside a durable run (a task handler, or a tool of a durable agent) the child is spawned once for this
        call site and the task waits suspended (no worker slot, no connection) until the child ended; the tool
        body that waited then runs again from its start, and its `run_as_child` calls return at once. Calls
        gathered with `asyncio.gather` all spawn before the task suspends. Outside a task, the child is spawned
        and its result polled. The task must be registered (`register_task`) in the workers of its queue.

        Args:
            user_prompt: The child run's prompt.
            message_history: Messages the child run continues from.
            metadata: JSON data for the child run (`RunContext.metadata`, and the task's params).
            queue: The child's queue. Default: the one `register_task` was given, else the client's.
            max_attempts: The child task's attempts. Default: Absurd's (5).

        Raises:
            ChildTaskFailedError: The child task failed for good.
            ChildTaskCancelledError: The child task was cancelled (its parent was cancelled, say).
        """
        assert LAYERS.children is not None, "wired by pydantic_ai_absurd/__init__.py"
        return await LAYERS.children.run_as_child(
            self,
            user_prompt,
            message_history=message_history,
            metadata=metadata,
            queue=queue,
            max_attempts=max_attempts,
        )
