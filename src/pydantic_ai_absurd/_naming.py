"""The step names of durable operations, built by a namer this package owns (`AbsurdOperationNamer`).

A step name is the `StepName` (`_step_names`) of the operation: the agent segment (`agent` for the first run
of that agent in a task execution, `agent~N` for the N-th, so concurrent runs of one agent in one task cannot
take each other's steps), the operation as Pydantic AI's `JournalOperationNamer` names it, the tool name after
`:` for every tool call and argument validation (MCP included), `@<tool_call_id>` on every tool-scoped step
(tool call, argument validation, a capability operation called from a tool) and `@<event_kind>[@<tool_call_id>]`
on event-handler steps. The names are persisted compatibility data: they must never change.

Absurd numbers repeated names in the order they are met (`name`, `name#2`, ...); the tool call ID makes
tool-scoped names unique within a model response, so parallel tool calls replay by identity, not order.
Characters that would corrupt a name (`%`, `#`, `@`) are percent-escaped in labels and IDs, and refused
in agent names, toolset IDs and model IDs. So are those Postgres cannot store in a `text` column (NUL and
lone surrogates, as the percent-escapes of their UTF-8 bytes): a model may put them in a tool call ID.
"""

from __future__ import annotations

import re

from pydantic_ai.durable_exec import (
    CapabilityOperationId,
    DurableOperationId,
    EventStreamHandlerId,
    JournalOperationNamer,
    ModelCancelSuspendedResponseId,
    ModelCompactMessagesId,
    ModelCountTokensId,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.tools import RunContext

from ._step_names import (
    CapabilityStep,
    EventHandlerStep,
    ModelOperation,
    ModelStep,
    Operation,
    StepName,
    ToolsetStep,
    escape,
)

__all__ = ["AbsurdOperationNamer", "check_identifier", "escape"]

_FORBIDDEN_IN_IDENTIFIERS = re.compile(r"[#@~%\s\x00-\x1f\x7f]")


def check_identifier(kind: str, value: str) -> None:
    """Refuse an agent name, toolset ID or model ID that would corrupt persisted step names."""
    if not value:
        raise UserError(f"The {kind} must not be empty: it is part of the persisted Absurd step names.")
    bad = _FORBIDDEN_IN_IDENTIFIERS.search(value)
    if bad is not None:
        raise UserError(
            f"The {kind} {value!r} contains {bad.group()!r}, which would corrupt the Absurd step names "
            "built from it (`#` numbers repeated steps, `@` separates tool call IDs, `~` marks run "
            "ordinals). Use letters, digits and `-_.:/`."
        )


def _run_context_in(cache_key: tuple[object, ...]) -> RunContext[object] | None:
    # Found by type, never by position: the layout of `cache_key` is private to Pydantic AI.
    for item in cache_key:
        if isinstance(item, RunContext):
            return item  # pyright: ignore[reportUnknownVariableType]
    return None


def _event_in(cache_key: tuple[object, ...]) -> object | None:
    for item in cache_key:
        if isinstance(getattr(item, "event_kind", None), str):
            return item
    return None


class AbsurdOperationNamer(JournalOperationNamer):
    """Names durable operations as `StepName`s: the same names as `JournalOperationNamer`, plus each call's own parts.

    `operation_name` gives what the operation alone says (the journal convention's `invocation_name` builds on it,
    for display); `step_name` gives the persisted name, adding what only the call says (the run ordinal, the tool,
    the tool call ID, the event), found in the operation's cache key.
    """

    def __init__(self, agent_name: str, *, default_model_id: str | None = None) -> None:
        super().__init__(agent_name, default_model_id=default_model_id or "default")
        self.agent_name = agent_name
        self.default_model_id = default_model_id or "default"

    def operation_name(self, operation_id: DurableOperationId) -> str:
        """The name of the operation, without anything a single call adds."""
        return StepName(self.operation(operation_id), self.agent_name).format()

    def step_name(
        self, operation_id: DurableOperationId, cache_key: tuple[object, ...], *, ordinal: int, agent: str | None = None
    ) -> StepName:
        """The step name of one call (before Absurd's `#N`), in the `ordinal`-th run of `agent` (default: this one's)."""
        operation = self.operation(operation_id)
        if isinstance(operation, EventHandlerStep):
            event = _event_in(cache_key)
            if event is not None:
                call = getattr(event, "tool_call_id", None)
                kind = str(getattr(event, "event_kind"))  # noqa: B009
                operation = EventHandlerStep(kind, call if isinstance(call, str) and call else None)
        elif isinstance(operation, ToolsetStep | CapabilityStep):
            run_context = _run_context_in(cache_key)
            if run_context is not None:
                call = run_context.tool_call_id or None
                if isinstance(operation, CapabilityStep):
                    operation = CapabilityStep(operation.capability_id, operation.operation, call)
                elif operation.operation in {"call_tool", "validate_args"}:
                    tool = run_context.tool_name or None
                    operation = ToolsetStep(operation.family, operation.toolset_id, operation.operation, tool, call)
        return StepName(operation, self.agent_name if agent is None else agent, ordinal)

    def operation(self, operation_id: DurableOperationId) -> Operation:
        """The `StepName` operation of `operation_id`, without anything a single call adds."""
        match operation_id:
            case CapabilityOperationId(capability_id=capability_id, operation=operation):
                return CapabilityStep(capability_id, operation)
            case ModelRequestId(model_id=model_id, streaming=streaming):
                return self._model("request_stream" if streaming else "request", model_id)
            case ModelCancelSuspendedResponseId(model_id=model_id):
                return self._model("cancel_suspended_response", model_id)
            case ModelCompactMessagesId(model_id=model_id):
                return self._model("compact_messages", model_id)
            case ModelCountTokensId(model_id=model_id):
                return self._model("count_tokens", model_id)
            case EventStreamHandlerId():
                return EventHandlerStep()
            case ToolsetGetToolsId(toolset_kind=kind, toolset_id=toolset_id):
                return ToolsetStep(kind, toolset_id, "get_tools")
            case ToolsetGetInstructionsId(toolset_id=toolset_id):
                return ToolsetStep("mcp", toolset_id, "get_instructions")
            case ToolsetValidateToolArgumentsId(toolset_kind=kind, toolset_id=toolset_id):
                return ToolsetStep(kind, toolset_id, "validate_args")
            case ToolsetCallToolId(toolset_kind=kind, toolset_id=toolset_id):
                return ToolsetStep(kind, toolset_id, "call_tool")

    def _model(self, operation: ModelOperation, model_id: str | None) -> ModelStep:
        return ModelStep(operation, None if model_id is None or model_id == self.default_model_id else model_id)
