"""The verification sandbox and the step-name rules behind verify and fork (no database needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, StepHandle, get_current_context

from pydantic_ai_absurd._absurd import (
    OfflineTaskContext,
    missing_offline_context_names,
    offline_task_context,
    registered_handlers,
)
from pydantic_ai_absurd.verify import RecordedStep, RecordedTask, replay_recorded
from pydantic_ai_absurd.verify._sandbox import SandboxViolation, WouldRunLive, sandbox_context
from pydantic_ai_absurd.verify._steps import describe_choices, fork_points, lane_of, tool_call_of


def test_private_sdk_names_of_the_offline_context_exist() -> None:
    assert missing_offline_context_names() == ()


@pytest.mark.parametrize("name", ["_lookup_checkpoint", "_persist_checkpoint", "_schedule_run_after"])
def test_a_missing_overridden_sdk_method_is_reported(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    missing_offline_context_names.cache_clear()
    monkeypatch.delattr(AsyncTaskContext, name)
    try:
        assert missing_offline_context_names() == (f"AsyncTaskContext.{name}",)
    finally:
        missing_offline_context_names.cache_clear()


class _Reached(BaseException):
    pass


class _Tracing(OfflineTaskContext):
    """Answers a lookup of "asleep" with a wake time far ahead; every other hook stops with `_Reached`."""

    async def lookup_checkpoint(self, checkpoint_name: str) -> object:
        if checkpoint_name == "asleep":
            return "2999-01-01T00:00:00+00:00"
        raise _Reached("lookup", checkpoint_name)

    async def persist_checkpoint(self, checkpoint_name: str, value: Any) -> Any:
        raise _Reached("persist", checkpoint_name)

    async def schedule_run_after(self, seconds: float) -> Any:
        raise _Reached("schedule", seconds > 0)


async def test_the_sdks_own_context_methods_store_only_through_the_offline_hooks() -> None:
    """Pins `AsyncTaskContext._lookup_checkpoint`, `_persist_checkpoint` and `_schedule_run_after` (absurd-sdk 0.5.1)."""
    task: Any = {"task_id": "t", "task_name": "n", "run_id": "r", "attempt": 1, "headers": {}}
    ctx = offline_task_context(_Tracing, task=task, queue_name="q", checkpoints={}, connection=None)
    with pytest.raises(_Reached) as reached:
        await ctx.begin_step("a")
    assert reached.value.args == ("lookup", "a")
    with pytest.raises(_Reached) as reached:
        await ctx.complete_step(StepHandle(name="b", checkpoint_name="b", done=False), 1)
    assert reached.value.args == ("persist", "b")
    with pytest.raises(_Reached) as reached:
        await ctx.sleep_until("asleep", 0)
    assert reached.value.args == ("schedule", True)
    with pytest.raises(_Reached) as reached:
        await ctx.await_event("e", "waiting")
    assert reached.value.args == ("lookup", "waiting")


def test_the_sandbox_context_is_an_sdk_context_that_refuses_the_database() -> None:
    ctx = sandbox_context(task_id="t", task_name="n", queue="q", params={}, headers={}, recording={"a": 1})
    assert isinstance(ctx, AsyncTaskContext) and ctx.task_id == "t" and ctx.headers == {}
    assert [ctx._get_checkpoint_name("a"), ctx._get_checkpoint_name("a")] == ["a", "a#2"]  # pyright: ignore[reportPrivateUsage]
    with pytest.raises(SandboxViolation, match="without a database"):
        ctx._conn.cursor()  # pyright: ignore[reportPrivateUsage]
    assert not issubclass(WouldRunLive, Exception)


def recorded(task_name: str, steps: dict[str, Any], params: Any = None) -> RecordedTask:
    return RecordedTask("task-1", task_name, params, tuple(RecordedStep(name, state) for name, state in steps.items()))


async def test_a_handler_that_swallows_exceptions_cannot_swallow_the_stop() -> None:
    absurd = AsyncAbsurd("postgresql://nobody@127.0.0.1:1/nothing", queue_name="q")
    seen: list[object] = []

    @absurd.register_task(name="careless")
    async def careless(params: Any, ctx: Any) -> str:
        seen.append(get_current_context())
        try:
            await ctx.step("live", _boom)
        except Exception:  # user code that swallows everything
            return "swallowed"
        return "unreachable"

    report = await replay_recorded(registered_handlers(absurd), [recorded("careless", {})])
    assert report.ok and report.tasks[0].next_step == "live"
    assert isinstance(seen[0], AsyncTaskContext) and get_current_context() is None


async def _boom() -> str:
    raise AssertionError("a step body ran in the sandbox")


def test_step_name_rules() -> None:
    assert lane_of("billing~2__model.request#3") == "billing~2"
    assert lane_of("fetch#2") == "fetch#2"
    assert tool_call_of("a__function_toolset__<agent>.call_tool:x@c%401#2") == "c@1"
    assert tool_call_of("a__conversation_load@chat-1") is None
    assert tool_call_of("a__event_stream_handler@part_start") is None
    assert tool_call_of("a__run.start_time@T:a:1") is None
    assert tool_call_of("a__model.request") is None
    names = [
        "a__model.request",
        "a__function_toolset__<agent>.call_tool:x@c1",
        "a__function_toolset__<agent>.call_tool:x@c2",
        "a__model.request#2",
        "a__function_toolset__<agent>.call_tool:x@c3",
        "a__model.request#3",
        "a__external_event:approve",
        "a__external_event:approve.event",
        "a__model.request#4",
    ]
    assert fork_points(names) == [0, 1, 3, 4, 5, 6, 8, 9]
    assert describe_choices(fork_points(names)) == "0-1, 3-6, 8-9"
    assert describe_choices([]) == "" and describe_choices([4]) == "4"


async def test_a_replay_that_awaits_something_else_is_reported_after_the_timeout() -> None:
    never = asyncio.Event()

    async def stuck(params: Any, ctx: Any) -> None:
        await never.wait()

    report = await replay_recorded({"stuck": stuck}, [recorded("stuck", {})], timeout=0.05)
    verdict = report.tasks[0]
    assert verdict.status == "error" and "did not finish within 0.05 s" in (verdict.error or "")


async def test_verify_refuses_an_sdk_without_the_names_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_ai_absurd import _absurd
    from pydantic_ai_absurd.errors import IncompatibleSdkError

    monkeypatch.setattr(
        _absurd._private, "missing_offline_context_names", lambda: ("AsyncTaskContext._step_name_counter",)
    )
    expected = r"lacks AsyncTaskContext._step_name_counter, which pydantic-ai-absurd relies on \(to verify"
    with pytest.raises(IncompatibleSdkError, match=expected):
        await replay_recorded({}, [])
