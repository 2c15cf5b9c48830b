"""`AbsurdAgent`: wrap an existing agent so its runs are durable inside Absurd tasks."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai.agent import AbstractAgent, AgentRun, EventStreamHandler, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT

from ._durability import AbsurdDurability


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
    ) -> None:
        """Wrap `wrapped`.

        Args:
            wrapped: The agent to make durable. It needs a `name` (or pass `name=`): step names use it.
            absurd: The Absurd client the agent's tasks run on, kept for helpers (`agent.absurd`).
            name: Overrides the agent's name in step names.
            models: Extra models runs may select with `run(model=...)`, keyed by ID.
            event_stream_handler: A durable event stream handler (each tool event is a step of its own).
        """
        super().__init__(wrapped)
        agent_name = name or wrapped.name
        if not agent_name:
            raise UserError(
                "AbsurdAgent needs an agent with a unique `name` (or `AbsurdAgent(..., name=...)`): it is part "
                "of every persisted step name, so a resumed run can find its checkpoints."
            )
        self._absurd = absurd
        self._durability = AbsurdDurability[AgentDepsT](
            name=agent_name, models=models, event_stream_handler=event_stream_handler
        )

    @property
    def absurd(self) -> AsyncAbsurd | None:
        """The Absurd client passed at construction."""
        return self._absurd

    @property
    def durability(self) -> AbsurdDurability[AgentDepsT]:
        """The capability added to each run."""
        return self._durability

    @asynccontextmanager
    async def iter(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        *args: Any,
        capabilities: Sequence[AbstractCapability[AgentDepsT]] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[AgentRun[AgentDepsT, Any]]:
        """Iterate over the run's nodes, with the durability capability added to the run."""
        async with self.wrapped.iter(*args, capabilities=[*(capabilities or ()), self._durability], **kwargs) as run:
            yield run
