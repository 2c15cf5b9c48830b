"""Deploy verification: recorded tasks replayed against new code in a sandbox that executes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from pydantic_ai_absurd import verify_replay
from pydantic_ai_absurd._absurd import registered_handlers
from pydantic_ai_absurd.errors import QueueNotFoundError, RecordingError
from pydantic_ai_absurd.testing import run_queued
from pydantic_ai_absurd.verify import TaskReplay, recorded_tasks, replay_recorded
from tests.helpers.agents import run_until_done
from tests.helpers.apps.verify_app import App, build_app
from tests.helpers.paths import APPS
from tests.helpers.sql import checkpoint_names, checkpoints


async def record(dsn: str, queue: str, *, wait: bool = True, prompt: str = "bill it") -> tuple[App, str]:
    """Run `bill` on the current code until it waits for approval (or completes); return the app and task ID."""
    app = build_app(dsn, queue, wait=wait)
    spawned = await app.absurd.spawn("bill", {"prompt": prompt})
    await run_queued(app.absurd)
    return app, str(spawned["task_id"])


async def verify_with(dsn: str, queue: str, variant: str, **kwargs: Any) -> tuple[App, TaskReplay]:
    new = build_app(dsn, queue, variant=variant)
    try:
        report = await verify_replay(new.absurd, **kwargs)
    finally:
        await new.absurd.close()
    assert len(report.tasks) == 1, report
    return new, report.tasks[0]


async def test_unchanged_code_replays_up_to_the_wait(absurd_dsn: str, absurd_queue: str) -> None:
    app, task_id = await record(absurd_dsn, absurd_queue)
    names_before = await checkpoint_names(absurd_dsn, absurd_queue, task_id)
    states_before = await checkpoints(absurd_dsn, absurd_queue, task_id)
    new, verdict = await verify_with(absurd_dsn, absurd_queue, "same")
    assert verdict.ok and verdict.status == "ok", verdict.describe()
    assert (verdict.task_id, verdict.task_name) == (task_id, "bill")
    assert verdict.replayed_steps == verdict.recorded_steps == 5
    assert verdict.next_step == f"$awaitEvent:approve:{task_id}"
    assert verdict.divergence is None and verdict.error is None and verdict.step is None and verdict.source is None
    # Nothing executed, nothing written.
    assert new.model_calls == 0 and new.charges == []
    assert await checkpoint_names(absurd_dsn, absurd_queue, task_id) == names_before
    assert await checkpoints(absurd_dsn, absurd_queue, task_id) == states_before
    snapshot = await app.absurd.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "sleeping"
    await app.absurd.close()


async def test_renamed_tool_is_a_divergence(absurd_dsn: str, absurd_queue: str) -> None:
    app, _ = await record(absurd_dsn, absurd_queue)
    await app.absurd.close()
    new, verdict = await verify_with(absurd_dsn, absurd_queue, "renamed_tool")
    assert verdict.status == "diverged" and not verdict.ok
    divergence = verdict.divergence
    assert divergence is not None
    assert divergence.step == "billing__model.request#2"
    assert "call_tool:charge@c1" in divergence.recorded and "tool 'charge'" in divergence.recorded
    assert "Unknown tool name: 'charge'" in divergence.requested
    assert divergence.source is not None and divergence.source.startswith("tests/helpers/apps/verify_app.py:")
    assert new.model_calls == 0 and new.charges == []
    assert divergence.step in verdict.describe()


async def test_changed_prompt_is_a_divergence_at_the_first_model_request(absurd_dsn: str, absurd_queue: str) -> None:
    app, _ = await record(absurd_dsn, absurd_queue)
    await app.absurd.close()
    new, verdict = await verify_with(absurd_dsn, absurd_queue, "new_prompt")
    divergence = verdict.divergence
    assert verdict.status == "diverged" and divergence is not None
    assert divergence.step == "billing__model.request"
    assert divergence.recorded.endswith("user-prompt bill it")
    assert divergence.requested.endswith("user-prompt bill it (be brief)")
    assert verdict.replayed_steps == 0
    assert (verdict.step, verdict.recorded, verdict.requested, verdict.source) == (
        divergence.step,
        divergence.recorded,
        divergence.requested,
        divergence.source,
    )
    assert new.model_calls == 0


async def test_reordered_agent_runs_are_a_divergence(absurd_dsn: str, absurd_queue: str) -> None:
    app, _ = await record(absurd_dsn, absurd_queue)
    await app.absurd.close()
    _, verdict = await verify_with(absurd_dsn, absurd_queue, "swapped")
    divergence = verdict.divergence
    assert verdict.status == "diverged" and divergence is not None
    assert divergence.step == "summary__model.request"
    assert "'billing__model.request'" in divergence.recorded
    assert "summary__model.request" in divergence.requested


def raw_steps_app(dsn: str, queue: str, order: list[str], ran: list[str]) -> AsyncAbsurd:
    """A handler writing its own steps (`ctx.step`) in `order`; `ran` collects the bodies that really ran."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)

    @absurd.register_task(name="steps")
    async def steps(params: Any, ctx: Any) -> list[str]:
        results: list[str] = []
        for name in order:

            async def body(name: str = name) -> str:
                ran.append(name)
                return f"value of {name}"

            results.append(await ctx.step(name, body))
        return results

    return absurd


async def test_raw_steps_reordered_removed_and_added(absurd_dsn: str, absurd_queue: str) -> None:
    ran: list[str] = []
    first = raw_steps_app(absurd_dsn, absurd_queue, ["fetch", "parse", "store"], ran)
    spawned = await first.spawn("steps", {})
    assert (await run_until_done(first, spawned["task_id"])).state == "completed"
    await first.close()
    ids = [str(spawned["task_id"])]

    async def verdict_for(order: list[str]) -> TaskReplay:
        ran.clear()
        client = raw_steps_app(absurd_dsn, absurd_queue, order, ran)
        try:
            report = await verify_replay(client, ids)
        finally:
            await client.close()
        assert ran == []  # no body ever runs in the sandbox
        return report.tasks[0]

    same = await verdict_for(["fetch", "parse", "store"])
    assert same.ok and same.next_step is None and same.replayed_steps == 3
    appended = await verdict_for(["fetch", "parse", "store", "notify"])
    assert appended.ok and appended.next_step == "notify"
    swapped = await verdict_for(["fetch", "store", "parse"])
    assert swapped.divergence is not None and swapped.divergence.step == "store"
    assert "'parse'" in swapped.divergence.recorded
    removed = await verdict_for(["fetch", "store"])
    assert removed.divergence is not None and removed.divergence.step == "store"
    inserted = await verdict_for(["fetch", "validate", "parse", "store"])
    assert inserted.divergence is not None and inserted.divergence.step == "validate"
    assert "new step 'validate'" in inserted.divergence.requested
    dropped_tail = await verdict_for(["fetch", "parse"])
    assert dropped_tail.divergence is not None and dropped_tail.divergence.step == "store"
    assert "finished without asking" in dropped_tail.divergence.requested


async def test_default_selection_is_running_and_sleeping_tasks(absurd_dsn: str, absurd_queue: str) -> None:
    waiting, waiting_id = await record(absurd_dsn, absurd_queue)
    done, done_id = await record(absurd_dsn, absurd_queue, wait=False)
    await waiting.absurd.close()
    new = build_app(absurd_dsn, absurd_queue)
    try:
        default = await verify_replay(new.absurd)
        assert [task.task_id for task in default.tasks] == [waiting_id]
        completed = await verify_replay(new.absurd, states=("completed",))
        assert [task.task_id for task in completed.tasks] == [done_id]
        both = await verify_replay(new.absurd, [done_id, waiting_id])
        assert [task.task_id for task in both.tasks] == [done_id, waiting_id]
        # The completed task's handler now waits for approval: a new step, which would run live.
        assert both.ok and both.tasks[0].next_step == f"$awaitEvent:approve:{done_id}"
        assert new.model_calls == 0
        assert "2 task(s) verified: 2 ok, 0 not ok" in str(both)
        assert len(both) == 2 and [task.task_id for task in both] == [done_id, waiting_id]
        assert both.get(done_id) is both.tasks[0] and both.get("nope") is None and both.failures == ()
    finally:
        await new.absurd.close()
        await done.absurd.close()


async def test_unknown_task_and_unregistered_task_name(absurd_dsn: str, absurd_queue: str) -> None:
    app, task_id = await record(absurd_dsn, absurd_queue)
    await app.absurd.close()
    other = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
    try:
        with pytest.raises(RecordingError, match="does not exist in queue"):
            await verify_replay(other, ["01a23148-0000-7000-8000-000000000000"])
        with pytest.raises(RecordingError, match="does not exist in queue"):
            await verify_replay(other, ["not-a-uuid"])
        with pytest.raises(QueueNotFoundError, match="does not exist"):
            await verify_replay(other, queue="no_such_queue_here")
        report = await verify_replay(other, [task_id])
        assert report.tasks[0].status == "error" and not report.ok
        assert "no handler is registered for task 'bill'" in (report.tasks[0].error or "")
    finally:
        await other.close()


async def test_sandbox_executes_nothing(absurd_dsn: str, absurd_queue: str) -> None:
    """Emits, sleeps, events, step bodies and raw checkpoint writes never reach the database in a replay."""
    absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
    ran: list[str] = []

    @absurd.register_task(name="busy")
    async def busy(params: Any, ctx: Any) -> str:
        first = await ctx.step("first", lambda: _note(ran, "first"))
        await ctx.emit_event(f"progress:{ctx.task_id}", {"at": "first"})
        handle = await ctx.begin_step("manual")
        if not handle.done:
            await ctx.complete_step(handle, {"written": True})
        await ctx.sleep_for("nap", 3600)
        return str(first)

    spawned = await absurd.spawn("busy", {})
    await run_queued(absurd)
    task_id = str(spawned["task_id"])
    assert ran == ["first"]
    names = await checkpoint_names(absurd_dsn, absurd_queue, task_id)
    assert names == ["first", "manual", "nap"]
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        events = sql.Identifier(f"e_{absurd_queue}")
        await conn.execute(sql.SQL("delete from absurd.{}").format(events))
        report = await verify_replay(absurd)
        verdict = report.tasks[0]
        assert verdict.ok and verdict.next_step == "nap", verdict.describe()
        assert ran == ["first"]
        cursor = await conn.execute(sql.SQL("select count(*) from absurd.{}").format(events))
        assert (await cursor.fetchone()) == (0,)
    assert await checkpoint_names(absurd_dsn, absurd_queue, task_id) == names
    await absurd.close()


async def _note(ran: list[str], name: str) -> str:
    ran.append(name)
    return name


async def test_recorded_tasks_read_params_and_checkpoints(absurd_dsn: str, absurd_queue: str) -> None:
    app, task_id = await record(absurd_dsn, absurd_queue, prompt="bill Q3")
    try:
        (task,) = await recorded_tasks(app.absurd)
        assert (task.task_id, task.task_name, task.queue, task.state) == (task_id, "bill", absurd_queue, "sleeping")
        assert task.params == {"prompt": "bill Q3"}
        assert [step.name for step in task.steps] == await checkpoint_names(absurd_dsn, absurd_queue, task_id)
        assert task.steps[0].asked is not None and "bill Q3" in task.steps[0].asked
    finally:
        await app.absurd.close()


async def test_parallel_tool_steps_replay_whatever_order_they_committed_in(absurd_dsn: str, absurd_queue: str) -> None:
    app, _ = await record(absurd_dsn, absurd_queue)
    (task,) = await recorded_tasks(app.absurd)
    await app.absurd.close()
    steps = list(task.steps)
    steps[1], steps[2] = steps[2], steps[1]  # c2 committed before c1
    swapped = replace(task, steps=tuple(steps))
    new = build_app(absurd_dsn, absurd_queue)
    report = await replay_recorded(registered_handlers(new.absurd), [swapped])
    assert report.ok, report
    # Moving a tool step of the batch after the next model request is a divergence.
    late = replace(task, steps=(steps[0], steps[2], steps[3], steps[1], steps[4]))
    verdict = (await replay_recorded(registered_handlers(new.absurd), [late])).tasks[0]
    assert verdict.divergence is not None
    assert verdict.divergence.step == "billing__function_toolset__<agent>.call_tool:charge@c2"
    assert "'billing__model.request#2'" in verdict.divergence.recorded
    assert (
        verdict.source == f"tests/helpers/apps/verify_app.py:{_line_of('async def charge(')}"
    )  # the tool's definition
    await new.absurd.close()


async def test_a_handler_failing_on_replay_is_an_error(absurd_dsn: str, absurd_queue: str) -> None:
    app, _ = await record(absurd_dsn, absurd_queue)
    (task,) = await recorded_tasks(app.absurd)
    await app.absurd.close()
    verdict = (await replay_recorded(registered_handlers(app.absurd), [replace(task, params={})])).tasks[0]
    assert verdict.status == "error" and verdict.error == "the handler raised on replay: KeyError: 'prompt'"
    assert verdict.describe().startswith(f"ERROR    {task.task_id} bill: the handler raised on replay")


async def test_a_task_waiting_for_approval_replays_up_to_the_wait(absurd_dsn: str, absurd_queue: str) -> None:
    from pydantic_ai_absurd import resolve_event_token
    from pydantic_ai_absurd.verify import fork_points_of
    from tests.unit.engine.test_external_events import refund_agent

    tokens: list[str] = []
    asked: list[str] = []
    agent, refunds = refund_agent(tokens, asked)
    absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)

    @absurd.register_task(name="support")
    async def support(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd.spawn("support", {})
    task_id = str(spawned["task_id"])
    await run_queued(absurd)
    waiting = (await verify_replay(absurd)).tasks[0]
    assert waiting.ok and waiting.next_step == "support__external_event:approve_refund.event", waiting.describe()
    assert len(asked) == 1 and refunds == []  # the sandbox neither asked again nor ran the tool
    await resolve_event_token(absurd, tokens[0], {"approvals": {"r1": True}})
    assert (await run_until_done(absurd, task_id)).state == "completed"
    done = (await verify_replay(absurd, [task_id])).tasks[0]
    assert done.ok and done.next_step is None and done.replayed_steps == done.recorded_steps
    assert len(asked) == 1 and refunds == [5]
    (task,) = await recorded_tasks(absurd, [task_id])
    names = [step.name for step in task.steps]
    ask = names.index("support__external_event:approve_refund")
    assert names[ask + 1] == "support__external_event:approve_refund.event"
    assert ask + 1 not in fork_points_of(task)  # never between the ask and its answer
    await absurd.close()


async def test_concurrent_agent_runs_replay_without_a_false_divergence(absurd_dsn: str, absurd_queue: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.messages import TextPart, ToolCallPart

    from pydantic_ai_absurd import AbsurdAgent
    from tests.helpers.agents import Script

    def app(ran: list[str]) -> AsyncAbsurd:
        absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
        agents: list[AbsurdAgent[None, str]] = []
        for name in ("left", "right"):
            script = Script(
                turns=[
                    lambda _, name=name: [ToolCallPart("look", {"side": name}, tool_call_id=f"{name}-1")],
                    lambda _, name=name: [ToolCallPart("look", {"side": name}, tool_call_id=f"{name}-2")],
                    lambda _: [TextPart("seen")],
                ]
            )
            agent = Agent(script.model(), name=name)

            @agent.tool_plain
            async def look(side: str) -> str:
                ran.append(side)
                await asyncio.sleep(0)
                return side

            agents.append(AbsurdAgent(agent))

        @absurd.register_task(name="both")
        async def both(params: Any, ctx: Any) -> list[str]:
            results = await asyncio.gather(*(agent.run("look") for agent in agents))
            return [result.output for result in results]

        return absurd

    ran: list[str] = []
    first = app(ran)
    spawned = await first.spawn("both", {})
    assert (await run_until_done(first, str(spawned["task_id"]))).state == "completed"
    await first.close()
    assert sorted(ran) == ["left", "left", "right", "right"]
    again: list[str] = []
    second = app(again)
    report = await verify_replay(second, [str(spawned["task_id"])])
    await second.close()
    assert report.ok and report.tasks[0].replayed_steps == report.tasks[0].recorded_steps == 10, report
    assert again == []


def _line_of(text: str) -> int:

    lines = (APPS / "verify_app.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line) - 1  # the decorator's line
