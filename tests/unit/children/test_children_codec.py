"""Child tasks without workers: their step names, what crosses between parent and child, output types, errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelRequest, UserPromptPart
from pydantic_ai.output import ToolOutput

import pydantic_ai_absurd
from pydantic_ai_absurd import ChildTaskCancelledError, ChildTaskFailedError, PydanticAIAbsurdError
from pydantic_ai_absurd._step_names import ChildTaskStep, StepName
from pydantic_ai_absurd.children._codec import ChildEnd, ChildRequest, ParentLink, failure_text, output_adapter


class Report(BaseModel):
    topic: str


TOOL_STEP = StepName.parse("coordinator__function_toolset__<agent>.call_tool:research@call_1")


def test_a_child_step_is_named_after_its_call_site_and_reads_back() -> None:
    step = StepName(ChildTaskStep(TOOL_STEP, "researcher", 2))
    name = step.format()
    assert name == ("coordinator__function_toolset__<agent>.call_tool:research%40call_1.child_task:researcher:2")
    assert StepName.parse(name) == step
    assert step.run_prefix == "coordinator"
    event = StepName(ChildTaskStep(None, "research:er", 1, "event"))
    assert event.format() == "child_event:research:er:1"
    assert StepName.parse(event.format()) == event


@given(st.text(), st.integers(1, 10**6))
def test_child_step_names_round_trip(task_name: str, occurrence: int) -> None:
    name = StepName(ChildTaskStep(TOOL_STEP, task_name, occurrence)).format()
    assert StepName.parse(name).format() == name


def test_the_call_key_depends_on_what_is_asked_and_nothing_else() -> None:
    first = ChildRequest.of("Research Postgres", None, {"depth": 2})
    assert first.key("researcher") == ChildRequest.of("Research Postgres", None, {"depth": 2}).key("researcher")
    assert first.key("researcher") != ChildRequest.of("Research MySQL", None, {"depth": 2}).key("researcher")
    assert first.key("researcher") != first.key("writer")


@pytest.mark.parametrize("text", ["nul \x00 here", "lone \udc80 surrogate"])
def test_a_request_round_trips_any_text_through_the_task_params(text: str) -> None:
    history = [ModelRequest(parts=[UserPromptPart(content=text)])]
    request = ChildRequest.of(text, history, {"note": text})
    params = request.params(ParentLink("agents", "0190-parent"))
    read, parent = ChildRequest.from_params(params)
    assert read.user_prompt() == text
    assert read.metadata == {"note": text}
    messages = read.message_history()
    assert messages is not None and messages[0].parts[0].content == text  # type: ignore[union-attr]
    assert parent == ParentLink("agents", "0190-parent")
    assert set(params) == {"json"} or set(params) == {"json_escaped"}  # an envelope: jsonb cannot hold the text


def test_plain_params_stay_readable_json() -> None:
    params = ChildRequest.of("Research Postgres", None, {"depth": 2}).params(ParentLink("agents", "0190-parent"))
    assert params == {
        "run_as_child": 1,
        "prompt": "Research Postgres",
        "message_history": None,
        "metadata": {"depth": 2},
        "parent": {"queue": "agents", "task_id": "0190-parent"},
    }


def test_metadata_must_be_json() -> None:
    with pytest.raises(UserError, match="metadata"):
        ChildRequest.of("hi", None, {"when": object()})


def test_params_of_another_task_are_refused() -> None:
    with pytest.raises(UserError, match="not spawned by `run_as_child`"):
        ChildRequest.from_params({"prompt": "hi"})


@pytest.mark.parametrize(
    ("spec", "raw", "expected"),
    [
        (Report, {"topic": "a"}, Report(topic="a")),
        (ToolOutput(Report), {"topic": "b"}, Report(topic="b")),
        ([Report, str], "text", "text"),
        (str, "plain", "plain"),
    ],
)
def test_the_output_is_validated_into_the_child_agents_output_type(spec: Any, raw: Any, expected: Any) -> None:
    adapter = output_adapter(spec)
    assert adapter is not None
    assert adapter.validate_python(raw) == expected


def test_an_output_function_keeps_the_json() -> None:
    def shout(text: str) -> str:
        return text.upper()

    assert output_adapter(shout) is None


def test_a_failure_reads_as_one_line() -> None:
    assert failure_text({"name": "RuntimeError", "message": "no\nsources"}) == "RuntimeError: no sources"
    assert failure_text("boom") == "boom"
    assert failure_text(None) is None
    end = ChildEnd.of_task("t1", "failed", None, {"name": "ValueError", "message": "bad"})
    assert ChildEnd.from_json(end.to_json()) == end
    assert end.usage().requests == 0 and end.messages() == []


def test_the_errors_are_exported_and_belong_to_the_package() -> None:
    for error in (ChildTaskFailedError, ChildTaskCancelledError):
        assert issubclass(error, PydanticAIAbsurdError)
        assert error.__name__ in pydantic_ai_absurd.__all__
    assert pydantic_ai_absurd.ChildRunResult.__name__ == "ChildRunResult"
