"""The naming rule for every kind of operation, including ones the end-to-end matrix cannot reach offline."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic_ai import RunContext
from pydantic_ai.durable_exec import (
    CapabilityOperationId,
    DurableOperationId,
    EventStreamHandlerId,
    JournalOperationNamer,
    ModelCancelSuspendedResponseId,
    ModelCompactMessagesId,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.messages import FunctionToolCallEvent, PartStartEvent, TextPart, ToolCallPart
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RunUsage

from pydantic_ai_absurd._naming import AbsurdOperationNamer, escape

BASE_CTX: RunContext[None] = RunContext(deps=None, model=TestModel(), usage=RunUsage())


def name_of(operation_id: DurableOperationId, *cache_key: Any, label: str | None = None, ordinal: int = 1) -> str:
    # `label` is what Pydantic AI names a call with; the namer takes the tool name from the run context instead.
    return (
        AbsurdOperationNamer("agent", default_model_id="default")
        .step_name(operation_id, cache_key, ordinal=ordinal)
        .format()
    )


TOOL_CTX = replace(BASE_CTX, tool_name="charge", tool_call_id="call#1@x")


@pytest.mark.parametrize(
    ("operation_id", "cache_key", "label", "expected"),
    [
        (ModelRequestId(None, model_name="m"), (BASE_CTX,), None, "agent__model.request"),
        (ModelRequestId("alt", streaming=True, model_name="m"), (BASE_CTX,), None, "agent__model.request_stream.alt"),
        (ModelCompactMessagesId(None, model_name="m"), (BASE_CTX,), None, "agent__model.compact_messages"),
        (
            ModelCancelSuspendedResponseId("alt", model_name="m"),
            (BASE_CTX,),
            None,
            "agent__model.cancel_suspended_response.alt",
        ),
        (ToolsetGetToolsId("mcp", toolset_id="srv"), (BASE_CTX,), None, "agent__mcp_server__srv.get_tools"),
        (ToolsetGetToolsId("dynamic", toolset_id="dyn"), (BASE_CTX,), None, "agent__dynamic_toolset__dyn.get_tools"),
        (ToolsetGetInstructionsId("srv"), (BASE_CTX,), None, "agent__mcp_server__srv.get_instructions"),
        (
            ToolsetCallToolId("function", toolset_id="fns"),
            ("charge", {}, TOOL_CTX, None),
            "charge",
            "agent__function_toolset__fns.call_tool:charge@call%231%40x",
        ),
        (
            ToolsetCallToolId("mcp", toolset_id="srv"),
            ("charge", {}, TOOL_CTX, None),
            "charge",
            "agent__mcp_server__srv.call_tool:charge@call%231%40x",
        ),
        (
            ToolsetValidateToolArgumentsId("function", toolset_id="fns"),
            ("charge", {}, TOOL_CTX, None),
            "charge",
            "agent__function_toolset__fns.validate_args:charge@call%231%40x",
        ),
        (CapabilityOperationId("audit", operation="record"), ({}, BASE_CTX), None, "agent__capability__audit.record"),
        (
            CapabilityOperationId("audit", operation="record"),
            ({}, TOOL_CTX),
            None,
            "agent__capability__audit.record@call%231%40x",
        ),
        (
            EventStreamHandlerId(),
            (FunctionToolCallEvent(ToolCallPart("charge", {}, tool_call_id="c1")),),
            None,
            "agent__event_stream_handler@function_tool_call@c1",
        ),
        (
            EventStreamHandlerId(),
            (PartStartEvent(index=0, part=TextPart("x")),),
            None,
            "agent__event_stream_handler@part_start",
        ),
    ],
)
def test_step_name_for_each_operation(
    operation_id: DurableOperationId, cache_key: tuple[Any, ...], label: str | None, expected: str
) -> None:
    assert name_of(operation_id, *cache_key, label=label) == expected


def test_later_runs_of_an_agent_get_their_ordinal() -> None:
    assert name_of(ModelRequestId(None, model_name="m"), BASE_CTX, ordinal=3) == "agent~3__model.request"


def test_escape_is_reversible_and_removes_meaningful_characters() -> None:
    assert escape("a%b#c@d") == "a%25b%23c%40d"
    assert "#" not in escape("###") and "@" not in escape("@@")


@pytest.mark.parametrize(
    "operation_id",
    [
        ModelRequestId(None, model_name="m"),
        ModelRequestId("alt", streaming=True, model_name="m"),
        ModelCompactMessagesId("default", model_name="m"),
        ModelCancelSuspendedResponseId("alt", model_name="m"),
        ToolsetGetToolsId("function", toolset_id="fns"),
        ToolsetGetInstructionsId("srv"),
        ToolsetValidateToolArgumentsId("dynamic", toolset_id="dyn"),
        ToolsetCallToolId("mcp", toolset_id="srv"),
        CapabilityOperationId("audit", operation="record"),
        EventStreamHandlerId(),
    ],
)
def test_the_namer_names_operations_as_the_journal_convention_does(operation_id: DurableOperationId) -> None:
    journal = JournalOperationNamer("agent", default_model_id="default")
    assert AbsurdOperationNamer("agent").operation_name(operation_id) == journal.operation_name(operation_id)
