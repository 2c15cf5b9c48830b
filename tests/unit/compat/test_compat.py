"""Guards for the private upstream details the engine relies on (docs: Compatibility): each fails loudly when upstream changes it.

The worker's private `absurd_sdk` names are pinned in `tests/unit/compat/test_worker_sdk_private.py`.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.durable_exec import BaseDurabilityCapability, CallableOperationBackend
from pydantic_ai.messages import TextPart

from pydantic_ai_absurd._absurd import claim_timeout_of
from pydantic_ai_absurd._durability import AbsurdDurability
from pydantic_ai_absurd._execution import current_task_context
from pydantic_ai_absurd._pydantic_ai import PrivateHooks, check_private_names
from tests.helpers.agents import Script, run_until_done
from tests.helpers.sql import checkpoints


async def test_async_task_context_exposes_its_claim_timeout(absurd_client: AsyncAbsurd) -> None:
    seen: list[float] = []

    @absurd_client.register_task(name="t")
    async def task(params: Any, ctx: Any) -> None:
        task_ctx = current_task_context()
        assert task_ctx is not None
        assert isinstance(getattr(task_ctx, "_claim_timeout", None), int), "AsyncTaskContext._claim_timeout changed"
        seen.append(claim_timeout_of(task_ctx))

    spawned = await absurd_client.spawn("t", {})
    await run_until_done(absurd_client, spawned["task_id"], claim_timeout=7)
    assert seen == [7.0]


async def test_async_task_context_exposes_its_queue_and_task_name(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai_absurd._absurd import client_queue_name, task_identity

    seen: list[tuple[str, str]] = []

    @absurd_client.register_task(name="named")
    async def task(params: Any, ctx: Any) -> None:
        task_ctx = current_task_context()
        assert task_ctx is not None
        seen.append(task_identity(task_ctx))  # AsyncTaskContext._queue_name and ._task["task_name"]

    spawned = await absurd_client.spawn("named", {})
    await run_until_done(absurd_client, spawned["task_id"])
    assert seen == [(client_queue_name(absurd_client), "named")]


def test_stamp_response_hook_still_exists_and_is_overridden() -> None:
    assert "_stamp_response" in vars(BaseDurabilityCapability), "BaseDurabilityCapability._stamp_response is gone"
    assert "_stamp_response" in vars(PrivateHooks)
    assert issubclass(AbsurdDurability, PrivateHooks)
    params = list(inspect.signature(BaseDurabilityCapability._stamp_response).parameters)  # pyright: ignore[reportPrivateUsage]
    assert params == ["self", "response", "messages"]


def test_execute_still_receives_a_cache_key() -> None:
    params = inspect.signature(CallableOperationBackend.execute).parameters
    assert {"operation_id", "name", "body", "cache_key", "config"} <= set(params)


async def test_stored_model_responses_carry_the_run_provenance(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    agent = Agent(Script(turns=[lambda _: [TextPart("x")]]).model(), name="stamp", capabilities=[AbsurdDurability()])

    @absurd_client.register_task(name="t")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("x")).run_id

    spawned = await absurd_client.spawn("t", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    stored = (await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"])))["stamp__model.request"]
    assert f'"run_id":"{snapshot.result}"' in stored["json"]


async def test_begin_step_is_answered_from_the_preloaded_checkpoints(absurd_client: AsyncAbsurd) -> None:
    from absurd_sdk import AsyncTaskContext

    from pydantic_ai_absurd._absurd import begin_step

    assert callable(getattr(AsyncTaskContext, "_get_checkpoint_name", None)), "AsyncTaskContext changed"
    seen: list[tuple[bool, object]] = []
    attempt = {"n": 0}

    @absurd_client.register_task(name="t")
    async def task(params: Any, ctx: Any) -> None:
        task_ctx = current_task_context()
        assert task_ctx is not None
        assert isinstance(getattr(task_ctx, "_checkpoint_cache", None), dict), "AsyncTaskContext changed"
        handle = await begin_step(task_ctx, "once")
        seen.append((handle.done, handle.state))
        if not handle.done:
            await task_ctx.complete_step(handle, {"v": 1})
        second = await begin_step(task_ctx, "once")
        assert second.checkpoint_name == "once#2"
        attempt["n"] += 1
        if attempt["n"] == 1:
            raise RuntimeError("fail the first run so the second replays")

    spawned = await absurd_client.spawn("t", {})
    await run_until_done(absurd_client, spawned["task_id"])
    assert seen == [(False, None), (True, {"v": 1})]


def test_runtime_toolset_guard_hook_still_exists_and_is_overridden() -> None:
    assert "_reject_runtime_toolsets" in vars(BaseDurabilityCapability), "the runtime-toolset guard moved"
    params = list(inspect.signature(BaseDurabilityCapability._reject_runtime_toolsets).parameters)  # pyright: ignore[reportPrivateUsage]
    assert params == ["self", "toolset"]
    assert "_reject_runtime_toolsets" in vars(PrivateHooks)


def test_a_missing_private_hook_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_ai_absurd.errors import IncompatibleSdkError

    check_private_names()
    monkeypatch.delattr(BaseDurabilityCapability, "_reject_runtime_toolsets")
    with pytest.raises(IncompatibleSdkError, match="_reject_runtime_toolsets"):
        AbsurdDurability[None]()


def test_journal_operation_names_keep_their_format() -> None:
    """Persisted step names start from upstream's `JournalOperationNamer`: a change there strands tasks."""
    from pydantic_ai.durable_exec import (
        CapabilityOperationId,
        EventStreamHandlerId,
        JournalOperationNamer,
        ModelRequestId,
        ToolsetCallToolId,
        ToolsetGetToolsId,
        ToolsetValidateToolArgumentsId,
    )

    namer = JournalOperationNamer("agent", default_model_id="default")

    def name(operation_id: Any, label: str | None = None) -> str:
        return namer.invocation_name(operation_id, label=label).operation_name

    assert name(ModelRequestId(model_id=None, streaming=False, model_name="m")) == "agent__model.request"
    assert name(ModelRequestId(model_id="other", streaming=True, model_name="m")) == "agent__model.request_stream.other"
    assert name(EventStreamHandlerId()) == "agent__event_stream_handler"
    assert name(ToolsetGetToolsId("function", toolset_id="tools")) == "agent__function_toolset__tools.get_tools"
    assert name(ToolsetGetToolsId("mcp", toolset_id="docs")) == "agent__mcp_server__docs.get_tools"
    assert (
        name(ToolsetValidateToolArgumentsId("function", toolset_id="tools"))
        == "agent__function_toolset__tools.validate_args"
    )
    assert (
        name(ToolsetCallToolId("function", toolset_id="tools"), "charge")
        == "agent__function_toolset__tools.call_tool:charge"
    )
    assert name(ToolsetCallToolId("mcp", toolset_id="docs"), "search") == "agent__mcp_server__docs.call_tool"
    assert name(CapabilityOperationId("cap", operation="op")) == "agent__capability__cap.op"


def test_every_private_pydantic_ai_name_is_checked_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_ai.run import AgentRunResult

    from pydantic_ai_absurd._pydantic_ai import missing_private_names
    from pydantic_ai_absurd.errors import IncompatibleSdkError

    assert missing_private_names() == []
    monkeypatch.delattr(AgentRunResult, "_conversation_saved")
    with pytest.raises(IncompatibleSdkError, match=r"lacks AgentRunResult\._conversation_saved"):
        AbsurdDurability[None]()
