"""The step backend: every durable operation of an agent run becomes one Absurd step."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypedDict

from pydantic_ai.durable_exec import (
    DurableOperationId,
    JournalCallableOperationBackend,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    record_durable_unit,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.tools import RunContext

from ._context import current_run_scope, execution_state, require_task_context, step_body_scope
from ._sdk_private import begin_step
from ._step_names import step_name


class StepConfig(TypedDict, total=False):
    """Per-operation step configuration (reserved: Absurd retries whole tasks, never single steps)."""


class UnserializableResultError(UserError):
    """A step produced a value that cannot be stored as JSON in Postgres.

    The failure is checkpointed, so a retry of the task raises it again without running the tool again.
    """


class UnserializableValue(Exception):
    """Raised by the codec inside a step body when its value cannot be encoded as JSON."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


_VALUE_KEY = "json"
_ERROR_KEY = "error"


def encode_checkpoint(payload: object) -> tuple[dict[str, str], object]:
    """The checkpoint stored for `payload`, and the value the run continues with.

    The payload is stored as JSON text, not as a `jsonb` object: `jsonb` reorders object keys, and the
    replayed messages would then differ byte for byte from the first run's, missing provider prompt
    caches after every recovery. The run continues with the decoded text on the first run too, so the
    first run and a replay see exactly the same value.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return {_VALUE_KEY: text}, json.loads(text)


def decode_checkpoint(state: object, *, step: str) -> object:
    """The value stored in a checkpoint, or the journaled failure raised again."""
    if isinstance(state, dict):
        if _VALUE_KEY in state and isinstance(text := state[_VALUE_KEY], str):  # pyright: ignore[reportUnknownVariableType]
            return json.loads(text)
        if _ERROR_KEY in state and isinstance(message := state[_ERROR_KEY], str):  # pyright: ignore[reportUnknownVariableType]
            raise UnserializableResultError(message)
    raise UserError(
        f"The checkpoint of step {step!r} was not written by pydantic-ai-absurd (or by an incompatible "
        "version of it), so it cannot be replayed. Cancel the task, or retry it with `spawn_new=True`."
    )


def _unserializable_message(
    step: str, operation_id: DurableOperationId, cache_key: tuple[Any, ...], error: Exception
) -> str:
    tool = next((item.tool_name for item in cache_key if isinstance(item, RunContext) and item.tool_name), None)
    what = f"Tool {tool!r}" if isinstance(operation_id, ToolsetCallToolId) and tool else f"Step {step!r}"
    return (
        f"{what} returned a value that cannot be stored as JSON in its Absurd checkpoint: {error}. Return "
        "JSON-compatible data instead: str, int, float, bool, None, lists and dicts of them, pydantic "
        "models, dataclasses, datetimes, bytes, `BinaryContent` or `ToolReturn`. The failure is recorded, "
        "so retries of this task do not run the tool again."
    )


class AbsurdStepBackend(JournalCallableOperationBackend[StepConfig | Literal[False]]):
    """Runs each durable operation as `ctx.step(name, body)` of the current Absurd task, under the lease keeper."""

    def __init__(self, *, agent_name: str, default_model_id: str | None, config: RoleBasedOperationConfig[Any]) -> None:
        super().__init__(agent_name=agent_name, default_model_id=default_model_id, config=config)
        self._agent_name = agent_name

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: StepConfig | Literal[False],
    ) -> object:
        """Return the checkpointed result of this step, running `body` first if it has none yet."""
        task_ctx = require_task_context()
        scope = current_run_scope()
        step = step_name(
            name,
            operation_id=operation_id,
            cache_key=cache_key,
            agent_name=self._agent_name,
            run_prefix=scope.prefix if scope is not None else self._agent_name,
        )
        handle = await begin_step(task_ctx, step)
        if handle.done:
            record_durable_unit(executed=False)
            return decode_checkpoint(handle.state, step=handle.checkpoint_name)

        async def run_body() -> object:
            with step_body_scope():
                return await body()

        try:
            payload = await execution_state(task_ctx).lease.run(run_body)
        except UnserializableValue as error:
            message = _unserializable_message(handle.checkpoint_name, operation_id, cache_key, error.cause)
            await task_ctx.complete_step(handle, {_ERROR_KEY: message})
            raise UnserializableResultError(message) from error.cause
        checkpoint, value = encode_checkpoint(payload)
        await task_ctx.complete_step(handle, checkpoint)
        record_durable_unit(executed=True)
        return value
