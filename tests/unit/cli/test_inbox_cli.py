"""`pydantic-ai-absurd inbox / approve / deny / answer` against real waiting runs; errors are one line, exit 2."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolResults, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.exceptions import CallDeferred
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, Inbox, InvalidAnswerError
from pydantic_ai_absurd.cli import main
from tests.helpers.agents import run_until_done
from tests.helpers.inbox import approval_agent
from tests.unit.inbox.test_inbox import start


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_list_approve_and_deny_from_the_command_line(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = Inbox(absurd_client)
    calls = [("delete_file", {"path": "/a"}, "d1"), ("refund", {"amount": 900}, "r1")]
    agent, _, counters = approval_agent(inbox, calls=calls)
    task_id = await start(absurd_client, agent)
    db = ("--database", absurd_dsn, "--queue", absurd_queue)

    code, out, _ = await cli(capsys, "inbox", *db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TOKEN", "KIND", "TOOL", "CALL", "TASK", "AGE", "ARGUMENTS"]
    assert any("delete_file" in line and '{"path":"/a"}' in line and task_id in line for line in lines)
    assert any("refund" in line and '{"amount":900}' in line for line in lines)

    code, out, _ = await cli(capsys, "inbox", "--json", *db)
    [listed] = json.loads(out)
    assert listed["task_id"] == task_id and listed["agent_name"] == "ops"
    assert sorted(call["tool_call_id"] for call in listed["approvals"]) == ["d1", "r1"]
    token = listed["token"]

    code, out, _ = await cli(capsys, "approve", token, "--call", "r1", "--by", "alice", *db)
    assert (code, out.strip()) == (0, f"Approved {token}; still pending: d1.")
    code, _, err = await cli(capsys, "approve", token, "--call", "r1", *db)
    assert code == 2 and err.count("\n") == 1 and "'r1'" in err and "not pending approvals" in err
    code, out, _ = await cli(capsys, "deny", token, "--reason", "keep /a", "--by", "bob", *db)
    assert (code, out.strip()) == (0, f"Denied {token}; the run continues.")
    code, _, err = await cli(capsys, "deny", token, "--reason", "again", *db)
    assert code == 2 and err.count("\n") == 1 and "already answered" in err

    done = await run_until_done(absurd_client, task_id)
    assert "refund=refunded 900" in str(done.result) and "delete_file=keep /a" in str(done.result)
    assert counters.runs == {"refund": 1}
    code, out, _ = await cli(capsys, "inbox", *db)
    assert out.strip() == "No pending requests."


async def test_answer_with_results_json(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox, calls=[("lookup", {"key": "k"}, "l1")])
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    db = ("-d", absurd_dsn, "-q", absurd_queue)
    code, _, err = await cli(capsys, "answer", request.token, "--results", "{not json", *db)
    assert code == 2 and err.count("\n") == 1 and "--results is not DeferredToolResults JSON" in err
    code, _, err = await cli(capsys, "answer", request.token, "--results", '{"calls": {"nope": 1}}', *db)
    assert code == 2 and "'nope'" in err
    code, _, err = await cli(
        capsys, "answer", request.token, "--results", '{"calls": {"l1": 1}}', "-d", absurd_dsn, "-q", "other"
    )
    assert code == 2 and "No pending inbox request" in err
    code, out, _ = await cli(capsys, "answer", request.token, "--results", '{"calls": {"l1": "found it"}}', *db)
    assert code == 0 and "the run continues" in out
    done = await run_until_done(absurd_client, task_id)
    assert done.result == "lookup=found it", done.failure


async def test_unknown_tokens_and_missing_databases_are_one_line_errors(
    absurd_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await cli(capsys, "approve", "pydantic-ai-absurd:x:y", "-d", absurd_dsn)
    assert (
        code == 2
        and err.strip() == "pydantic-ai-absurd: error: No pending inbox request has token 'pydantic-ai-absurd:x:y'."
    )
    code, _, err = await cli(capsys, "inbox", "-d", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 2 and err.count("\n") == 1


def test_the_subcommands_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out: Any = capsys.readouterr().out
    for name in ("inbox", "approve", "deny", "answer"):
        assert name in out


def _waiting_agent(inbox: Inbox) -> AbsurdAgent[None, str]:
    """Calls `delete_file` (needs approval) and `lookup` (an external result), then says what it got."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(
                parts=[
                    ToolCallPart("delete_file", {"path": "/a"}, tool_call_id="d1"),
                    ToolCallPart("lookup", {"key": "k"}, tool_call_id="l1"),
                ]
            )
        return ModelResponse(parts=[TextPart("done")])

    async def delete_file(path: str) -> str:
        return f"deleted {path}"

    async def lookup(key: str) -> str:
        raise CallDeferred()

    inner = Agent(
        FunctionModel(respond, model_name="scripted"),
        name="ops",
        tools=[Tool(delete_file, requires_approval=True), Tool(lookup)],
        capabilities=[HandleDeferredToolCalls(inbox.ask, name="approve")],
    )
    return AbsurdAgent(inner)


BAD_RESULTS = [
    ("{bad", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1]", "a JSON list, not an object"),
    ('{"call": {"l1": 1}}', "unknown field(s) 'call'"),
    ('{"calls": [1]}', "calls: Input should be an object"),
    ('{"approvals": {"d1": "yes"}}', "approvals.d1: Input should be a valid boolean"),
]


async def test_invalid_answers_are_one_line_without_pydantic_urls(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = Inbox(absurd_client)
    task_id = await start(absurd_client, _waiting_agent(inbox))
    [request] = await inbox.pending(task_id=task_id)
    db = ("-d", absurd_dsn, "-q", absurd_queue)
    expected = "expected an object with calls, approvals, metadata, answered_by, e.g. "
    for results, problem in BAD_RESULTS:
        code, out, err = await cli(capsys, "answer", request.token, "--results", results, *db)
        assert (code, out, err.count("\n")) == (2, "", 1), (results, err)
        assert f"--results is not DeferredToolResults JSON: {problem}; {expected}" in err
        assert "errors.pydantic.dev" not in err and "Traceback" not in err
    code, _, err = await cli(capsys, "deny", request.token, "--reason", "no", "--call", "l1", *db)
    assert code == 2 and err.count("\n") == 1 and "'l1' are not pending approvals" in err
    code, _, err = await cli(capsys, "approve", "pydantic-ai-absurd:nope", *db)
    assert (
        code == 2
        and err.strip() == "pydantic-ai-absurd: error: No pending inbox request has token 'pydantic-ai-absurd:nope'."
    )


async def test_invalid_answers_from_python_are_one_line_without_pydantic_urls(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    task_id = await start(absurd_client, _waiting_agent(inbox))
    [request] = await inbox.pending(task_id=task_id)
    bad: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (
            lambda: inbox.answer(request.token, DeferredToolResults(calls=5)),
            "calls: Input should be a valid dictionary",
        ),  # type: ignore[arg-type]
        (
            lambda: inbox.deny(request.token, reason=7),  # type: ignore[arg-type]
            "approvals.d1.tool-denied.message: Input should be a valid string",
        ),
        (lambda: inbox.approve(request.token, tool_call_ids="d1"), "not the str 'd1'; pass ['d1']"),
    ]
    for call, problem in bad:
        with pytest.raises(InvalidAnswerError) as raised:
            await call()
        message = str(raised.value)
        assert problem in message and "\n" not in message and "errors.pydantic.dev" not in message
    assert [c.tool_call_id for c in (await inbox.get(request.token) or request).approvals] == ["d1"]
