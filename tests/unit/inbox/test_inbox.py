"""The inbox inside real durable runs: ask, list, answer from another client, and the same run continues."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext

from pydantic_ai_absurd import Inbox, InvalidAnswerError, PendingRequest, RequestNotPendingError
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.agents import run_until_done
from tests.helpers.inbox import approval_agent


async def start(absurd: AsyncAbsurd, agent: Any, prompt: str = "clean up", deps: Any = None) -> str:
    """Register `ops` running `agent`, spawn it, run until it waits; return the task ID."""

    @absurd.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        result = await agent.run(prompt, deps=params.get("deps") or {})
        return result.output if isinstance(result.output, str) else repr(result.output)

    spawned = await absurd.spawn("ops", {"deps": deps})
    await run_queued(absurd)
    return str(spawned["task_id"])


async def test_approve_resumes_the_same_run_once(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    inbox = Inbox(absurd_client)
    agent, script, counters = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "sleeping"

    # Another process: its own client, nothing registered.
    other = AsyncAbsurd(absurd_dsn, queue_name="unused")
    try:
        pending = await Inbox(other).pending(task_id=task_id)
        assert len(pending) == 1
        request = pending[0]
        assert isinstance(request, PendingRequest)
        assert request.task_id == task_id and request.task_name == "ops" and request.agent_name == "ops"
        assert request.queue_name == snapshot_queue(absurd_client)
        assert request.name == "approve"
        assert [(c.tool_name, c.args_as_dict(), c.tool_call_id) for c in request.approvals] == [
            ("delete_file", {"path": "/tmp/a"}, "d1")
        ]
        assert request.calls == [] and request.expires_at is None and request.scope is None
        assert await Inbox(other).get(request.token) == request
        assert await Inbox(other).approve(request.token, answered_by="alice") is None
    finally:
        await other.close()

    assert await inbox.pending(task_id=task_id) == []
    assert await inbox.get(request.token) is None
    done = await run_until_done(absurd_client, task_id)
    assert done.state == "completed", done.failure
    assert done.result == "delete_file=deleted /tmp/a"
    assert counters.runs == {"delete_file": 1}
    assert script.calls == 2  # the request that produced the approval was not sent again
    assert [event.results.answered_by for event in counters.results_events] == [{"d1": "alice"}]


def snapshot_queue(absurd: AsyncAbsurd) -> str:
    from pydantic_ai_absurd._absurd import client_queue_name

    return client_queue_name(absurd)


async def test_deny_reports_the_reason_to_the_model(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    agent, script, counters = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    await inbox.deny(request.token, reason="not today", answered_by="bob")
    done = await run_until_done(absurd_client, task_id)
    assert done.result == "delete_file=not today", done.failure
    assert counters.runs == {} and script.calls == 2
    assert counters.results_events[0].results.answered_by == {"d1": "bob"}


async def test_approval_required_from_a_tool_and_partial_answers(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    calls = [
        ("refund", {"amount": 500}, "big"),
        ("refund", {"amount": 5}, "small"),
        ("delete_file", {"path": "/x"}, "del"),
    ]
    agent, script, counters = approval_agent(inbox, calls=calls)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    assert sorted(c.tool_call_id for c in request.approvals) == ["big", "del"]
    assert request.metadata == {"big": {"reason": "large refund"}}
    with pytest.raises(InvalidAnswerError, match="'small'"):
        await inbox.approve(request.token, tool_call_ids=["small"])
    rest = await inbox.approve(request.token, tool_call_ids=["big"], answered_by="carol")
    assert rest is not None and [c.tool_call_id for c in rest.approvals] == ["del"]
    assert await run_queued(absurd_client) == 0  # still waiting: not every call has a decision
    [again] = await inbox.pending(task_id=task_id)
    assert [c.tool_call_id for c in again.approvals] == ["del"]
    with pytest.raises(InvalidAnswerError, match="'big'"):
        await inbox.deny(request.token, reason="no", tool_call_ids=["big"])
    assert await inbox.deny(request.token, reason="keep it", answered_by="dave") is None
    done = await run_until_done(absurd_client, task_id)
    assert done.state == "completed", done.failure
    assert "refund=refunded 500" in str(done.result) and "delete_file=keep it" in str(done.result)
    assert counters.runs == {"refund": 2} and script.calls == 2
    assert counters.results_events[0].results.answered_by == {"big": "carol", "del": "dave"}


async def test_call_deferred_is_answered_with_results(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    agent, script, _ = approval_agent(inbox, calls=[("lookup", {"key": "k"}, "l1")])
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    assert [c.tool_call_id for c in request.calls] == ["l1"] and request.approvals == []
    assert request.metadata == {"l1": {"key": "k"}}
    with pytest.raises(InvalidAnswerError, match="no pending approval"):
        await inbox.approve(request.token)
    with pytest.raises(InvalidAnswerError, match="not pending external calls"):
        await inbox.answer(request.token, DeferredToolResults(calls={"zz": 1}))
    with pytest.raises(InvalidAnswerError, match="not pending approvals"):
        await inbox.answer(request.token, DeferredToolResults(approvals={"l1": True}))
    await inbox.answer(request.token, DeferredToolResults(calls={"l1": "value 42"}, answered_by={"l1": "erin"}))
    done = await run_until_done(absurd_client, task_id)
    assert done.result == "lookup=value 42", done.failure
    assert script.calls == 2


async def test_two_concurrent_answers_exactly_one_wins(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    inbox = Inbox(absurd_client)
    agent, _, counters = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    # Hold the row lock so both answers are in flight at the same moment, then let them race.
    async with await psycopg.AsyncConnection.connect(absurd_dsn) as blocker:
        await blocker.execute(
            "select 1 from pydantic_ai_absurd.inbox_requests where token = %s for update", (request.token,)
        )
        answers = [
            asyncio.ensure_future(inbox.approve(request.token, answered_by="alice")),
            asyncio.ensure_future(inbox.deny(request.token, reason="no", answered_by="bob")),
        ]
        await _waiting_on_lock(absurd_dsn, 2)
        await blocker.rollback()
    outcomes = await asyncio.gather(*answers, return_exceptions=True)
    assert sum(outcome is None for outcome in outcomes) == 1
    assert sum(isinstance(outcome, RequestNotPendingError) for outcome in outcomes) == 1
    done = await run_until_done(absurd_client, task_id)
    assert done.state == "completed"
    winner = "alice" if outcomes[0] is None else "bob"
    assert counters.results_events[0].results.answered_by == {"d1": winner}
    assert counters.runs == ({"delete_file": 1} if winner == "alice" else {})


async def _waiting_on_lock(dsn: str, count: int) -> None:
    from tests.helpers.polling import wait_until

    async def blocked() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                " and query like '%inbox_requests%for update%'"
            )
            row = await cur.fetchone()
            return row is not None and int(row[0]) >= count

    await wait_until(blocked)


async def test_answered_unknown_and_ended_tokens_are_not_pending(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    with pytest.raises(RequestNotPendingError, match="No pending inbox request"):
        await inbox.approve("pydantic-ai-absurd:nope:nothing")
    await absurd_client.cancel_task(task_id)
    assert await inbox.pending(task_id=task_id) == []
    with pytest.raises(RequestNotPendingError, match="cancelled") as caught:
        await inbox.approve(request.token)
    assert caught.value.token == request.token
    assert "\n" not in str(caught.value)


async def test_a_timed_out_wait_is_not_pending(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    from datetime import timedelta

    inbox = Inbox(absurd_client)
    agent, _, counters = approval_agent(inbox, timeout=timedelta(hours=1))
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    assert request.expires_at is not None
    assert timedelta(minutes=59) < request.expires_at - request.asked_at <= timedelta(hours=1)
    # Let the hour pass for the inbox (the run itself keeps waiting on Absurd's own timeout).
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await conn.execute(
            "update pydantic_ai_absurd.inbox_requests set expires_at = now() - interval '1 second' where token = %s",
            (request.token,),
        )
    assert await inbox.pending(task_id=task_id) == []
    with pytest.raises(RequestNotPendingError, match="expired"):
        await inbox.approve(request.token)
    assert counters.runs == {}


async def test_scopes_keep_tenants_apart(absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    inbox = Inbox(absurd_client, scope=lambda ctx: ctx.deps["tenant"])
    agent, _, counters = approval_agent(inbox)

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("go", deps=params["deps"])).output

    a = str((await absurd_client.spawn("ops", {"deps": {"tenant": "acme"}}))["task_id"])
    b = str((await absurd_client.spawn("ops", {"deps": {"tenant": "globex"}}))["task_id"])
    await run_queued(absurd_client)
    [acme] = await inbox.pending(scope="acme")
    [globex] = await inbox.pending(scope="globex")
    assert (acme.task_id, acme.scope, globex.task_id, globex.scope) == (a, "acme", b, "globex")
    assert await inbox.get(globex.token, scope="acme") is None
    with pytest.raises(RequestNotPendingError):
        await inbox.approve(globex.token, scope="acme")
    with pytest.raises(RequestNotPendingError):
        await inbox.answer(globex.token, DeferredToolResults(approvals={"d1": True}), scope="acme")
    await inbox.approve(acme.token, scope="acme")
    assert [r.token for r in await inbox.pending(queue_name=absurd_queue)] == [globex.token]
    assert (await run_until_done(absurd_client, a)).state == "completed"
    assert counters.runs == {"delete_file": 1}


async def test_notify_is_called_once_per_request_even_when_the_step_is_retried(absurd_client: AsyncAbsurd) -> None:
    seen: list[PendingRequest] = []
    fail = {"left": 1}

    async def notify(request: PendingRequest) -> None:
        seen.append(request)

    inbox = Inbox(absurd_client, notify=notify)
    original = inbox.ask

    async def flaky_ask(ctx: Any, requests: Any, token: str) -> None:
        await original(ctx, requests, token)
        if fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("the worker died right after asking")

    agent, _, _ = approval_agent(inbox)
    # The capability calls the bound `ask`; swap it for the flaky one.
    from pydantic_ai.capabilities import HandleDeferredToolCalls

    for capability in agent.wrapped.root_capability.capabilities:  # type: ignore[attr-defined]
        if isinstance(capability, HandleDeferredToolCalls):
            capability.handler = flaky_ask
    task_id = await start(absurd_client, agent)
    pending = await inbox.pending(task_id=task_id)
    assert fail["left"] == 0  # the step did fail once after recording
    assert len(pending) == 1 and [r.token for r in seen] == [pending[0].token]


async def test_pending_is_oldest_first_and_limited(absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox)

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("go", deps={})).output

    ids = []
    for _ in range(3):
        ids.append(str((await absurd_client.spawn("ops", {}))["task_id"]))
        await run_queued(absurd_client)
    assert [r.task_id for r in await inbox.pending(queue_name=absurd_queue)] == ids
    assert [r.task_id for r in await inbox.pending(limit=2, queue_name=absurd_queue)] == ids[:2]
    with pytest.raises(ValueError, match="limit"):
        await inbox.pending(limit=0)


async def test_the_two_run_pattern_keeps_working(absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    from pydantic_ai import DeferredToolRequests

    inbox = Inbox(absurd_client)
    agent, script, counters = approval_agent(inbox, with_request_input=False, output_type=[str, DeferredToolRequests])

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        first = await agent.run("go")
        assert isinstance(first.output, DeferredToolRequests)
        results = DeferredToolResults(approvals={call.tool_call_id: True for call in first.output.approvals})
        second = await agent.run(message_history=first.all_messages(), deferred_tool_results=results)
        return second.output

    spawned = await absurd_client.spawn("ops", {})
    done = await run_until_done(absurd_client, str(spawned["task_id"]))
    assert done.result == "delete_file=deleted /tmp/a", done.failure
    assert counters.runs == {"delete_file": 1} and script.calls == 2
    assert await inbox.pending(queue_name=absurd_queue) == []


async def test_purge_deletes_answered_rows_only(absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    from datetime import timedelta

    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox)

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("go", deps={})).output

    first = str((await absurd_client.spawn("ops", {}))["task_id"])
    second = str((await absurd_client.spawn("ops", {}))["task_id"])
    await run_queued(absurd_client)
    [answered] = await inbox.pending(task_id=first)
    await inbox.approve(answered.token)
    await run_until_done(absurd_client, first)
    assert await inbox.purge(older_than=timedelta(0)) >= 1
    assert [r.task_id for r in await inbox.pending(queue_name=absurd_queue)] == [second]


async def test_a_tool_waiting_directly_with_wait_for_external_event(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai.external_events import wait_for_external_event
    from pydantic_ai.messages import TextPart, ToolCallPart

    from pydantic_ai_absurd import AbsurdAgent
    from tests.helpers.agents import Script
    from tests.helpers.inbox import tool_outcomes

    inbox = Inbox(absurd_client)
    sent: list[str] = []
    script = Script(
        turns=[
            lambda _: [ToolCallPart("send_email", {"to": "x@example.com"}, tool_call_id="e1")],
            lambda messages: [TextPart(tool_outcomes(messages))],
        ]
    )
    inner = Agent(script.model(), name="mailer")

    # A tool that waits is not a step itself (a durable unit cannot wait): `metadata={"absurd": False}`.
    @inner.tool(metadata={"absurd": False})
    async def send_email(ctx: RunContext[None], to: str) -> str:
        call = ToolCallPart("send_email", {"to": to}, tool_call_id=ctx.tool_call_id or "")
        payload = await wait_for_external_event(
            "confirm_email", ask=lambda token: inbox.ask(ctx, DeferredToolRequests(approvals=[call]), token)
        )
        decision = DeferredToolResults(**payload)  # type: ignore[arg-type]
        if decision.approvals.get(call.tool_call_id) is not True and not isinstance(
            decision.approvals.get(call.tool_call_id), dict
        ):
            return "not sent"
        sent.append(to)
        return f"sent to {to}"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="mail")
    async def mail(params: Any, ctx: Any) -> Any:
        return (await agent.run("mail")).output

    task_id = str((await absurd_client.spawn("mail", {}))["task_id"])
    await run_queued(absurd_client)
    [request] = await inbox.pending(task_id=task_id)
    assert request.name == "confirm_email" and request.agent_name == "mailer" and request.task_name == "mail"
    await inbox.approve(request.token, answered_by="frank")
    done = await run_until_done(absurd_client, task_id)
    assert done.state == "completed", done.failure
    assert done.result == "send_email=sent to x@example.com"
    assert sent == ["x@example.com"] and script.calls == 2


async def test_external_toolset_calls_are_answered_with_results(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.capabilities import HandleDeferredToolCalls
    from pydantic_ai.messages import TextPart, ToolCallPart
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets import ExternalToolset

    from pydantic_ai_absurd import AbsurdAgent
    from tests.helpers.agents import Script
    from tests.helpers.inbox import tool_outcomes

    inbox = Inbox(absurd_client)
    script = Script(
        turns=[
            lambda _: [ToolCallPart("browser_geolocation", {}, tool_call_id="g1")],
            lambda messages: [TextPart(tool_outcomes(messages))],
        ]
    )
    frontend = ExternalToolset(
        [ToolDefinition(name="browser_geolocation", parameters_json_schema={"type": "object", "properties": {}})]
    )
    agent = AbsurdAgent(
        Agent(script.model(), name="geo", toolsets=[frontend], capabilities=[HandleDeferredToolCalls(inbox.ask)])
    )

    @absurd_client.register_task(name="geo")
    async def geo(params: Any, ctx: Any) -> Any:
        return (await agent.run("where am I")).output

    task_id = str((await absurd_client.spawn("geo", {}))["task_id"])
    await run_queued(absurd_client)
    [request] = await inbox.pending(task_id=task_id)
    assert [c.tool_name for c in request.calls] == ["browser_geolocation"]
    await inbox.answer(request.token, DeferredToolResults(calls={"g1": "Paris"}))
    done = await run_until_done(absurd_client, task_id)
    assert done.result == "browser_geolocation=Paris", done.failure
    assert script.calls == 2


async def test_an_answer_that_fails_to_emit_changes_nothing(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic_ai_absurd import _absurd

    inbox = Inbox(absurd_client)
    agent, _, counters = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    emit = _absurd.emit_event_sql

    async def dying_emit(*args: Any) -> None:
        raise ConnectionError("the answering process lost Postgres between marking and emitting")

    monkeypatch.setattr(_absurd, "emit_event_sql", dying_emit)
    with pytest.raises(ConnectionError):
        await inbox.approve(request.token, answered_by="alice")
    assert await inbox.pending(task_id=task_id) == [request]  # not marked answered either
    assert await run_queued(absurd_client) == 0  # and the run was not woken
    monkeypatch.setattr(_absurd, "emit_event_sql", emit)
    await inbox.approve(request.token, answered_by="alice")
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert counters.runs == {"delete_file": 1}


async def test_ask_outside_a_durable_run_is_refused(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai.exceptions import UserError

    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox)
    with pytest.raises(UserError, match="durable run"):
        await agent.run("go", deps={})


def test_errors_are_exported_and_one_line() -> None:
    import pydantic_ai_absurd
    from pydantic_ai_absurd.errors import PydanticAIAbsurdError

    for name in ("Inbox", "PendingRequest", "RequestNotPendingError", "InvalidAnswerError"):
        assert name in pydantic_ai_absurd.__all__ and getattr(pydantic_ai_absurd, name) is not None
    assert issubclass(RequestNotPendingError, PydanticAIAbsurdError)
    assert issubclass(InvalidAnswerError, PydanticAIAbsurdError)


def test_private_task_context_names_are_still_there() -> None:
    from absurd_sdk import AsyncTaskContext

    from pydantic_ai_absurd._absurd import missing_private_names

    assert {"_queue_name", "_task"} <= set(AsyncTaskContext.__annotations__)
    assert missing_private_names() == ()


async def test_a_real_timeout_denies_the_calls_and_the_token_expires(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from tests.helpers.sql import client_on_fake_clock

    # The inbox works on connections of its own: they run on the fake clock too.
    async with client_on_fake_clock(absurd_dsn, absurd_queue, new_connections=monkeypatch) as (client, clock):
        inbox = Inbox(client)
        agent, script, counters = approval_agent(inbox, timeout=timedelta(seconds=1))
        task_id = await start(client, agent)
        [request] = await inbox.pending(task_id=task_id)
        await clock.advance(timedelta(seconds=0.5))
        assert [r.token for r in await inbox.pending(task_id=task_id)] == [request.token]  # not expired yet
        await clock.advance(timedelta(seconds=1))
        assert await inbox.pending(task_id=task_id) == []
        with pytest.raises(RequestNotPendingError, match="expired"):
            await inbox.approve(request.token)

        await run_queued(client)
        done = await client.fetch_task_result(task_id)
    assert done is not None and done.state == "completed"
    assert "No decision on this tool call arrived" in str(done.result)
    assert counters.runs == {} and script.calls == 2


async def test_a_token_resolved_without_the_inbox_is_no_longer_pending(
    absurd_client: AsyncAbsurd, absurd_queue: str
) -> None:
    from pydantic_ai_absurd import resolve_event_token

    inbox = Inbox(absurd_client)
    agent, _, counters = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    [request] = await inbox.pending(task_id=task_id)
    await resolve_event_token(absurd_client, request.token, {"approvals": {"d1": True}})
    assert await inbox.pending(queue_name=absurd_queue) == []
    with pytest.raises(RequestNotPendingError, match="already answered"):
        await inbox.deny(request.token, reason="too late")
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert counters.runs == {"delete_file": 1}


async def test_with_the_production_worker(absurd_client: AsyncAbsurd) -> None:
    from tests.helpers.polling import wait_until
    from tests.helpers.workers import running_worker

    inbox = Inbox(absurd_client)
    agent, script, counters = approval_agent(inbox)

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("go", deps={})).output

    task_id = str((await absurd_client.spawn("ops", {}))["task_id"])
    async with running_worker(absurd_client, concurrency=2):

        async def asked() -> list[PendingRequest]:
            return await inbox.pending(task_id=task_id)

        [request] = await wait_until(asked)
        await inbox.approve(request.token, answered_by="alice")

        async def done() -> bool:
            snapshot = await absurd_client.fetch_task_result(task_id)
            return snapshot is not None and snapshot.state == "completed"

        await wait_until(done)
    assert counters.runs == {"delete_file": 1} and script.calls == 2


async def test_listings_and_answers_reuse_one_connection(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = Inbox(absurd_client)
    agent, _, _ = approval_agent(inbox)
    task_id = await start(absurd_client, agent)
    opened: list[object] = []
    connect = psycopg.AsyncConnection.connect

    async def counting_connect(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        opened.append(args)
        return await connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", counting_connect)
    for _ in range(3):
        [request] = await inbox.pending(task_id=task_id)
    await inbox.approve(request.token)
    assert await inbox.get(request.token) is None
    assert len(opened) == 1  # a web app's calls do not open a connection each
    monkeypatch.undo()
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
