"""`StepName` reads back every name it writes, and writes back every pinned name byte for byte."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pydantic_ai_absurd._step_names import (
    CapabilityStep,
    ConversationStep,
    EventHandlerStep,
    ExternalEventStep,
    GraphSleep,
    ModelOperation,
    ModelStep,
    Operation,
    OtherStep,
    ProviderWait,
    RunStartTime,
    StepName,
    ToolsetOperation,
    ToolsetStep,
    WaitPart,
    escape,
    unescape,
)
from tests.helpers.paths import FIXTURES
from tests.unit.step_names.test_step_names import PINNED_NAMES

RECORDED_NAMES = sorted(
    {
        checkpoint["name"]
        for path in FIXTURES.glob("checkpoints_*.json")
        for checkpoint in json.loads(path.read_text())["checkpoints"]
    }
)
# Names pinned elsewhere (tests/unit/step_names/test_step_name_rules.py, the docs) and the kinds the end-to-end matrix cannot reach.
OTHER_PINNED = [
    "agent__model.request",
    "agent__model.compact_messages",
    "agent__model.cancel_suspended_response.alt",
    "agent__model.count_tokens",
    "agent__function_toolset__fns.call_tool:charge@call%231%40x",
    "agent__mcp_server__srv.validate_args:charge@call%231%40x",
    "agent__capability__audit.record",
    "agent__capability__audit.record@call%231%40x",
    "agent__event_stream_handler@part_start",
    "agent~3__model.request",
    "analyst__model.request.provider_wait",
    "analyst~2__model.request%232.provider_wait",
    "support__external_event:approve",
    "support__external_event:approve.event#2",
    "support__graph.sleep#4",
    "support__conversation_load@chat-1",
    "support__conversation_save@chat%401",
    "my-own-step",
    "fetch#2",
]

# Identifiers `check_identifier` lets through (without `__`, which would make the agent segment ambiguous).
IDENTIFIER = st.from_regex(r"\A[A-Za-z0-9<][A-Za-z0-9_.:/<>-]{0,12}\Z").filter(lambda s: "__" not in s)
# Labels and IDs are escaped: any text, with what needs escaping (and NUL, lone surrogates) made likely.
TEXT = st.text(
    st.one_of(st.characters(), st.sampled_from(["#", "@", "%", "~", ":", ".", "_", "\x00", "\ud800", "\udfff"]))
)
_TOOLSET_OPS = ("call_tool", "validate_args", "get_tools", "get_instructions")
_OPTIONAL_TEXT = st.none() | TEXT


@st.composite
def toolset_steps(draw: st.DrawFn) -> ToolsetStep:
    operation: ToolsetOperation = draw(st.sampled_from(_TOOLSET_OPS))
    # A toolset ID holding `.<operation>` could be read as the end of the toolset part.
    toolset_id = draw(IDENTIFIER.filter(lambda s: not any(f".{op}" in s for op in _TOOLSET_OPS)))
    labelled = operation in {"call_tool", "validate_args"}
    return ToolsetStep(
        draw(st.sampled_from(["function", "mcp", "dynamic"])),
        toolset_id,
        operation,
        draw(_OPTIONAL_TEXT) if labelled else None,
        draw(_OPTIONAL_TEXT) if labelled else None,
    )


@st.composite
def event_handler_steps(draw: st.DrawFn) -> EventHandlerStep:
    kind = draw(_OPTIONAL_TEXT)
    return EventHandlerStep(kind, None if kind is None else draw(_OPTIONAL_TEXT))


def model_steps() -> st.SearchStrategy[ModelStep]:
    operations: list[ModelOperation] = [
        "request",
        "request_stream",
        "count_tokens",
        "compact_messages",
        "cancel_suspended_response",
    ]
    model_ids = st.none() | IDENTIFIER.filter(lambda s: not s.endswith(".provider_wait"))
    return st.builds(ModelStep, st.sampled_from(operations), model_ids)


def wait_steps() -> st.SearchStrategy[ExternalEventStep]:
    parts: list[WaitPart] = ["ask", "event", "timed_out"]
    # A wait named `x.event` would be read as the event step of wait `x`: the format cannot tell them apart.
    names = TEXT.filter(lambda s: not s.endswith((".event", ".timed_out")))
    return st.builds(ExternalEventStep, names, st.sampled_from(parts))


OPERATIONS: st.SearchStrategy[Operation] = st.one_of(
    model_steps(),
    toolset_steps(),
    st.builds(
        CapabilityStep,
        IDENTIFIER,
        st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}\Z"),
        _OPTIONAL_TEXT,
    ),
    event_handler_steps(),
    st.builds(RunStartTime, TEXT),
    st.just(GraphSleep()),
    wait_steps(),
    st.builds(ConversationStep, st.sampled_from(["load", "save"]), TEXT),
)
REPEATS = st.integers(1, 10_000)
AGENT_NAMES = st.builds(
    StepName,
    OPERATIONS,
    IDENTIFIER,
    st.integers(1, 1000),
    REPEATS,
)
# A step of the user's own: text with no agent segment, no `#N` of its own and no provider-wait suffix.
OWN_STEPS = st.builds(
    StepName,
    st.builds(
        OtherStep,
        TEXT.filter(lambda s: "__" not in s and not re.search(r"#\d+$", s) and not s.endswith(".provider_wait")),
    ),
    st.none(),
    st.just(1),
    REPEATS,
)
PROVIDER_WAITS = st.builds(
    StepName,
    st.builds(ProviderWait, st.builds(StepName, model_steps(), IDENTIFIER, st.integers(1, 50), REPEATS)),
    st.none(),
    st.just(1),
    REPEATS,
)


@given(st.one_of(AGENT_NAMES, OWN_STEPS, PROVIDER_WAITS))
def test_parse_reads_back_what_format_writes(name: StepName) -> None:
    assert StepName.parse(name.format()) == name


@given(TEXT)
def test_parse_then_format_gives_back_any_string(text: str) -> None:
    assert StepName.parse(text).format() == text


@given(TEXT)
def test_unescape_inverts_escape(text: str) -> None:
    escaped = escape(text)
    assert unescape(escaped) == text
    assert not re.search(r"[#@\x00]", escaped)


@pytest.mark.parametrize("name", sorted(PINNED_NAMES) + RECORDED_NAMES + OTHER_PINNED)
def test_every_pinned_name_parses_and_formats_back_byte_for_byte(name: str) -> None:
    parsed = StepName.parse(name)
    assert parsed.format() == name
    if name not in {"my-own-step", "fetch#2"}:
        assert not isinstance(parsed.operation, OtherStep), parsed


def test_what_the_readers_used_to_disagree_on() -> None:
    conversation = StepName.parse("a__conversation_load@chat-1")
    assert conversation == StepName(ConversationStep("load", "chat-1"), "a")
    assert conversation.tool_call_id is None
    tool = StepName.parse("a~2__function_toolset__<agent>.call_tool:x@c%401#2")
    assert tool == StepName(ToolsetStep("function", "<agent>", "call_tool", "x", "c@1"), "a", 2, 2)
    assert tool.tool_call_id == "c@1"
    assert StepName.parse("a__event_stream_handler@part_start").tool_call_id is None
    wait = StepName.parse("analyst~2__model.request%232.provider_wait")
    assert wait.run_prefix == "analyst~2"
    assert wait.operation == ProviderWait(StepName(ModelStep("request"), "analyst", 2, 2))


def test_escapes_not_written_by_escape_are_not_read_as_ours() -> None:
    # `%41` is not something `escape` writes: reading it as `A` would not format back to the same name.
    assert StepName.parse("a__conversation_load@%41") == StepName(OtherStep("a__conversation_load@%41"))


@pytest.mark.parametrize("call_id", ["\n", "a\nb", "c\n", "\r\n2"])
def test_line_breaks_in_a_tool_call_id_read_back(call_id: str) -> None:
    """A model writes tool call IDs: one holding a line break (found by Hypothesis) parses back, repeated or not."""
    for repeat in (1, 2):
        name = StepName(ToolsetStep("function", "0", "call_tool", "t", call_id), "agent", repeat=repeat)
        assert StepName.parse(name.format()) == name
