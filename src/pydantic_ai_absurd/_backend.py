"""The step backend: every durable operation of an agent run becomes one Absurd step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_ai.durable_exec import (
    CallableOperationBackend,
    DurableOperationId,
    ModelCompactMessagesId,
    ModelCountTokensId,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    record_durable_unit,
)
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets.function import FunctionToolsetTool

from . import _absurd
from ._digest import DigestChain, asked_for
from ._execution import current_run_scope, current_task_context, execution_state, require_task_context
from ._naming import AbsurdOperationNamer
from ._provider_waits import ProviderWaitPolicy, provider_retry
from ._steps import run_step, step_function

_PROVIDER_CALLS = (ModelRequestId, ModelCountTokensId, ModelCompactMessagesId)


class UnserializableValue(Exception):
    """Raised by the codec inside a step body when its value cannot be encoded as JSON."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _unserializable_message(
    operation_id: DurableOperationId, cache_key: tuple[object, ...]
) -> Callable[[BaseException, str], str | None]:
    def message(error: BaseException, step: str) -> str | None:
        if not isinstance(error, UnserializableValue):
            return None
        tool = next((item.tool_name for item in cache_key if isinstance(item, RunContext) and item.tool_name), None)
        what = f"Tool {tool!r}" if isinstance(operation_id, ToolsetCallToolId) and tool else f"Step {step!r}"
        return (
            f"{what} returned a value that cannot be stored as JSON in its Absurd checkpoint: {error.cause}. "
            "Return JSON-compatible data instead: str, int, float, bool, None, lists and dicts of them, pydantic "
            "models, dataclasses, datetimes, bytes, `BinaryContent` or `ToolReturn`. The failure is recorded, "
            "so retries of this task do not run the tool again."
        )

    return message


def _tool_function(cache_key: tuple[object, ...]) -> object | None:
    # A function tool's `call_func` is bound to its function schema, which holds the user's function.
    for item in cache_key:
        if isinstance(item, FunctionToolsetTool):
            call_func: object = getattr(item, "call_func", None)  # pyright: ignore[reportUnknownArgumentType]
            return getattr(getattr(call_func, "__self__", None), "function", None)
    return None


class AbsurdStepBackend(CallableOperationBackend[bool]):
    """Runs each durable operation as one Absurd step of the current task, under the lease keeper."""

    def __init__(
        self,
        *,
        agent_name: str,
        default_model_id: str | None,
        config: RoleBasedOperationConfig[Any],
        provider_waits: ProviderWaitPolicy,
    ) -> None:
        self.namer = AbsurdOperationNamer(agent_name, default_model_id=default_model_id)
        super().__init__(namer=self.namer, config=config)
        self.agent_name = agent_name
        self.provider_waits = provider_waits

    def execution_attempt(self) -> int:
        """Absurd's attempt of the task run executing now (1 outside a task), carried by stream events' origin."""
        task_ctx = current_task_context()
        return 1 if task_ctx is None else _absurd.execution_attempt(task_ctx)

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: bool,
    ) -> object:
        """Return the checkpointed result of this step, running `body` first if it has none yet.

        The step is named by the namer from the operation and its cache key; `name` (the operation's name
        alone) is not the step name. `config` is whether the operation is a step at all: a step has no
        settings of its own (Absurd retries whole tasks, never single steps), and Pydantic AI never calls this
        for `False`.
        """
        scope = current_run_scope()
        agent, ordinal = (scope.agent_name, scope.ordinal) if scope is not None else (self.agent_name, 1)
        step = self.namer.step_name(operation_id, cache_key, agent=agent, ordinal=ordinal).format()
        chains = execution_state(require_task_context()).digest_chains
        chain = chains.setdefault(scope.prefix if scope is not None else self.agent_name, DigestChain())
        with step_function(_tool_function(cache_key)):
            outcome = await run_step(
                step,
                body,
                asked=asked_for(operation_id, cache_key, chain),
                on_unencodable=_unserializable_message(operation_id, cache_key),
                retry=provider_retry(self.provider_waits) if isinstance(operation_id, _PROVIDER_CALLS) else None,
                transactional=isinstance(operation_id, ToolsetCallToolId) and operation_id.toolset_kind != "mcp",
                write_behind=True,
            )
        record_durable_unit(executed=outcome.executed)
        return outcome.value
