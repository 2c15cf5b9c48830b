"""`AbsurdDurability`: the capability that makes an agent's runs durable inside Absurd tasks."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, cast

from absurd_sdk import CancelledTask, FailedTask, SuspendTask
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.capabilities import AbstractCapability, WrapRunHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    DurabilityEngineSpec,
    DurableOperationId,
    RoleBasedOperationConfig,
    conversation_id_from_run_id,
    external_event_scope,
    replay_scope,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_ai.toolsets import AbstractToolset

from ._absurd import check_private_names
from ._backend import AbsurdStepBackend, UnserializableValue
from ._execution import current_run_scope, current_task_context, execution_state, in_step, run_scope
from ._extensions import LAYERS, DurableRun, DurableRunHook
from ._naming import check_identifier
from ._provider_waits import DEFAULT_MAX_PROVIDER_WAIT, ProviderWaitPolicy
from ._pydantic_ai import PrivateHooks
from ._pydantic_ai import check_private_names as check_pydantic_ai_private_names
from ._steps import settle_writes
from ._time import DEFAULT_SUSPEND_THRESHOLD, graph_sleep, run_start_time
from ._waits import AbsurdEventWaiter
from .errors import ReplayDivergenceError

TOOL_METADATA_KEY = "absurd"
"""Tool metadata key for per-tool step settings: `metadata={"absurd": False}` runs a pure tool without a step."""


def _unserializable(error: Exception) -> BaseException:
    return UnserializableValue(error)


def _tool_config(operation_id: DurableOperationId, tool: object | None, tool_name: str) -> bool:
    """Whether a tool call is a step: `False` for a tool with `metadata={"absurd": False}`."""
    tool_def = getattr(tool, "tool_def", None)
    metadata = getattr(tool_def, "metadata", None)
    setting: object = (
        cast(Mapping[str, object], metadata).get(TOOL_METADATA_KEY) if isinstance(metadata, Mapping) else None
    )
    return setting is not False


class AbsurdDurability(PrivateHooks[AgentDepsT]):
    """Checkpoints every model request, tool call, MCP call and event-handler call of an agent run as an Absurd step.

    Inside an async Absurd task (`@absurd.register_task` on an `AsyncAbsurd` client), each operation runs
    once: its result is stored as JSON in Postgres, and a worker that resumes the task after a crash
    replays it from there. Outside a task the agent behaves exactly like a plain `Agent`.

    Attach it at construction, `Agent(..., name="analyst", capabilities=[AbsurdDurability()])`, or wrap
    an agent with [`AbsurdAgent`][pydantic_ai_absurd.AbsurdAgent].
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="Absurd",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="task",
        codec=JSON_CODEC,
        serialization_failure=_unserializable,
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        tool_config_key=TOOL_METADATA_KEY,
        cancellation_error_types=(CancelledTask, FailedTask),
        control_flow_error_types=(SuspendTask,),
        nondeterminism_error_types=(ReplayDivergenceError,),
    )

    def __init__(
        self,
        *,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        name: str | None = None,
        suspend_threshold: float = DEFAULT_SUSPEND_THRESHOLD,
        max_provider_wait: float = DEFAULT_MAX_PROVIDER_WAIT,
    ) -> None:
        """Create the capability.

        Args:
            models: Extra models, keyed by ID, that runs may select with `run(model=...)`. A `Model`
                instance cannot be rebuilt by a worker from its name, so an instance used at run time
                must be registered here; model-name strings need no registration.
            event_stream_handler: A durable event stream handler: model events reach it live inside the
                model step, and each tool event runs in a step of its own, so it sees every event once.
            name: The name used in step names. Defaults to the agent's `name`, which must then be set.
            suspend_threshold: Seconds. A wait at least this long (the agent graph's sleep between polls of a
                provider's background job, a `RetryOnModelErrors` backoff, a provider's retry-after) suspends the
                task in Postgres and frees the worker slot; a shorter one sleeps in the worker. Default 5.
            max_provider_wait: Seconds. When a model request fails with a provider error that asks to retry
                after a while (HTTP 429 or 503 with `retry-after`), its step waits and calls the model again,
                without using one of the task's attempts, until its waits add up to this; then the error fails
                the run as any other. Default 900.
        """
        if suspend_threshold < 0 or max_provider_wait < 0:
            raise UserError("`suspend_threshold` and `max_provider_wait` are seconds and must not be negative.")
        check_private_names()
        check_pydantic_ai_private_names()
        if name is not None:
            check_identifier("agent name", name)
        for model_id in models or {}:
            check_identifier("model ID", model_id)
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        # The layers' hooks around each durable run (see `_extensions`): the handler's, then the defaults.
        handler_hooks = [event_stream_handler] if isinstance(event_stream_handler, DurableRunHook) else []
        self._run_hooks: tuple[DurableRunHook, ...] = (*handler_hooks, *(make() for make in LAYERS.run_hooks))
        self._backend: AbsurdStepBackend | None = None
        self.provider_waits = ProviderWaitPolicy(suspend_threshold=suspend_threshold, max_wait=max_provider_wait)

    def for_agent(self, agent: AbstractAgent[AgentDepsT, Any]) -> AbstractCapability[AgentDepsT]:
        """Bind to `agent`, refusing names and IDs that would corrupt the persisted step names."""
        check_identifier("agent name", self.name or agent.name or "")
        if isinstance(agent.model, str):
            check_identifier("model ID", agent.model)
        toolset_ids: list[str] = []

        def collect(leaf: AbstractToolset[AgentDepsT]) -> None:
            if leaf.id is not None:
                toolset_ids.append(leaf.id)

        for toolset in agent.toolsets:
            toolset.apply(collect)
        for toolset_id in toolset_ids:
            check_identifier("toolset ID", toolset_id)
        self.remember_bound_leaves(agent)  # copied into the bound capability below
        return super().for_agent(agent)

    @property
    def in_durable_context(self) -> bool:
        """Whether the current code runs in an async Absurd task, outside any step body."""
        return current_task_context() is not None and not in_step()

    def get_default_run_id(self) -> str | None:
        """`<task id>:<agent name>:<n>` for the n-th run of this agent in the task: the same on every replay."""
        task_ctx = current_task_context()
        if task_ctx is None or in_step():
            return None
        ordinal = execution_state(task_ctx).next_run_id_ordinal(self.name)
        return f"{task_ctx.task_id}:{self.name}:{ordinal}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        """A conversation ID derived from the replay-stable run ID."""
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        """When the run first started, recorded in a step, so `run(timeout=...)` survives a resume."""
        if not self.in_durable_context:
            return None
        return await run_start_time(self.name, run_id)

    def get_durable_operation_backend(self) -> AbsurdStepBackend:
        """The step backend for this bound capability."""
        backend = self._backend
        if backend is None or backend.agent_name != self.name:
            backend = AbsurdStepBackend(
                agent_name=self.name,
                default_model_id=self.default_model_id,
                config=RoleBasedOperationConfig[bool](
                    model=True, event=True, capability=True, tool=True, resolve_tool=_tool_config
                ),
                provider_waits=self.provider_waits,
            )
            self._backend = backend
        return backend

    async def durable_sleep(self, seconds: float) -> None:
        """The agent graph's wait in the task: suspended in Postgres from `suspend_threshold` seconds, else in-process.

        Either way the wake time is a checkpoint, so a resumed run waits only what is left.
        """
        scope = current_run_scope()
        agent, ordinal = (scope.agent_name, scope.ordinal) if scope is not None else (self.name, 1)
        await graph_sleep(agent, ordinal, seconds, suspend_threshold=self.provider_waits.suspend_threshold)

    async def wrap_run(self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler) -> AgentRunResult[Any]:
        """Install the run's step scope, replay scope and durable event waiter, and enter the run hooks."""
        task_ctx = current_task_context()
        if task_ctx is None or in_step():
            return await super().wrap_run(ctx, handler=handler)
        scope = execution_state(task_ctx).next_run_scope(self.name)
        run = DurableRun(task_ctx, agent_name=self.name, prefix=scope.prefix, run_id=ctx.run_id)
        with run_scope(scope), replay_scope(), external_event_scope(AbsurdEventWaiter(task_ctx, scope)):
            async with AsyncExitStack() as hooks:
                for hook in self._run_hooks:
                    await hooks.enter_async_context(hook.durable_run(run))
                try:
                    return await super().wrap_run(ctx, handler=handler)
                finally:
                    await settle_writes(task_ctx)  # the steps' checkpoints are committed before the run returns
