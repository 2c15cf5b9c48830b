"""`AbsurdAgent(..., conversation_store=...)`: turns that load, run and save a stored conversation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from pydantic_ai import Agent
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import InMemoryConversationStore
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults

from pydantic_ai_absurd import AbsurdAgent, PostgresConversationStore
from pydantic_ai_absurd._steps import commit_hook
from pydantic_ai_absurd.errors import ConversationUsageError
from tests.helpers.agents import SimulatedCrash, run_until_done
from tests.helpers.polling import wait_until
from tests.helpers.sql import checkpoint_names, task_state
from tests.helpers.workers import running_worker


def prompts_of(messages: list[ModelMessage]) -> list[str]:
    return [str(part.content) for m in messages for part in m.parts if isinstance(part, UserPromptPart)]


def echo_agent(seen: list[list[str]] | None = None) -> Agent[None, str]:
    """Answers with the user prompts it has seen so far; records each request's prompts in `seen`."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompts = prompts_of(messages)
        if seen is not None:
            seen.append(prompts)
        return ModelResponse(parts=[TextPart(" | ".join(prompts))])

    return Agent(FunctionModel(respond, model_name="scripted"), name="chat")


@pytest.fixture
async def store(absurd_dsn: str) -> AsyncIterator[PostgresConversationStore]:
    async with PostgresConversationStore(absurd_dsn) as pg:
        yield pg


def new_id() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


async def test_outside_a_task_turns_load_and_save(store: PostgresConversationStore) -> None:
    agent = AbsurdAgent(echo_agent(), conversation_store=store)
    conversation_id = new_id()
    first = await agent.run("hello", conversation_id=conversation_id)
    assert first.output == "hello"
    second = await agent.run("again", conversation_id=conversation_id)
    assert second.output == "hello | again"
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["hello", "again"]
    assert len(loaded.messages) == 4
    assert second.conversation.revision == loaded.revision
    assert loaded.usage.requests == 2
    # Without a conversation ID (or with 'new') the store is not used.
    await agent.run("unstored")
    assert await store.load("new") is None


async def test_in_memory_store_and_iter(store: PostgresConversationStore) -> None:
    memory = InMemoryConversationStore()
    agent = AbsurdAgent(echo_agent(), conversation_store=memory)
    async with agent.iter("one", conversation_id="c") as run:
        async for _ in run:
            pass
    await agent.run("two", conversation_id="c")
    loaded = await memory.load("c")
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["one", "two"]


async def test_conflicting_arguments_are_refused(store: PostgresConversationStore) -> None:
    agent = AbsurdAgent(echo_agent(), conversation_store=store)
    with pytest.raises(ConversationUsageError, match="`message_history=` cannot be passed too"):
        await agent.run("x", conversation_id=new_id(), message_history=[])


async def test_scope_is_passed_through(store: PostgresConversationStore) -> None:
    agent = AbsurdAgent(echo_agent(), conversation_store=store)
    conversation_id = new_id()
    alice = f"alice-{conversation_id}"  # the tables are shared with other test processes
    await agent.run("mine", conversation_id=conversation_id, scope=alice)
    record = await store.read_record(conversation_id)
    assert record is not None
    assert record.scope == alice
    with pytest.raises(ConversationUsageError, match="stored with another scope"):
        await agent.run("not yours", conversation_id=conversation_id, scope="bob")
    result = await agent.run("mine again", conversation_id=conversation_id, scope=alice)
    assert result.output == "mine | mine again"
    assert [r.conversation_id for r in await store.list_conversations(scope=alice, limit=1)] == [conversation_id]


def chat_task(absurd: AsyncAbsurd, agent: AbsurdAgent[None, Any]) -> None:
    @absurd.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        result = await agent.run(params["message"], conversation_id=params["conversation_id"])
        return {"output": result.output}


async def test_turns_inside_tasks_are_steps(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, store: PostgresConversationStore
) -> None:
    agent = AbsurdAgent(echo_agent(), absurd_client, conversation_store=store)
    chat_task(absurd_client, agent)
    conversation_id = new_id()
    outputs: list[str] = []
    task_ids: list[str] = []
    for message in ("hi", "how are you", "bye"):
        spawned = await absurd_client.spawn("chat-turn", {"message": message, "conversation_id": conversation_id})
        snapshot = await run_until_done(absurd_client, spawned["task_id"])
        assert snapshot.state == "completed", snapshot.failure
        outputs.append(snapshot.result["output"])
        task_ids.append(spawned["task_id"])
    assert outputs == ["hi", "hi | how are you", "hi | how are you | bye"]
    names = await checkpoint_names(absurd_dsn, absurd_queue, task_ids[1])
    # Persisted step names are compatibility data: pinned.
    assert names == [
        f"chat__conversation_load@{conversation_id}",
        "chat__model.request",
        f"chat__conversation_save@{conversation_id}",
    ]
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["hi", "how are you", "bye"]


async def test_a_resumed_turn_sees_the_first_attempts_history_and_a_conflict_is_not_retried(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, store: PostgresConversationStore
) -> None:
    seen: list[list[str]] = []
    inner = echo_agent(seen)
    agent = AbsurdAgent(inner, absurd_client, conversation_store=store)
    conversation_id = new_id()
    await agent.run("first", conversation_id=conversation_id)
    attempts: list[int] = []

    @absurd_client.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        attempts.append(1)

        async def crash_once(name: str) -> None:
            # After the load checkpoint: another turn of the conversation finishes, then this worker dies.
            if len(attempts) == 1 and "model.request" in name:
                other = await store.load(conversation_id)
                assert other is not None
                other.messages.extend(
                    [ModelRequest(parts=[UserPromptPart("other")]), ModelResponse(parts=[TextPart("ok")])]
                )
                await store.save(other)
                raise SimulatedCrash

        with commit_hook(crash_once):
            result = await agent.run(params["message"], conversation_id=conversation_id)
        return {"output": result.output}

    seen.clear()
    spawned = await absurd_client.spawn(
        "chat-turn", {"message": "second"}, max_attempts=5, retry_strategy={"kind": "fixed", "base_seconds": 0}
    )
    async with running_worker(absurd_client):
        await wait_until(lambda: _failed(absurd_client, spawned["task_id"]))
    # Both attempts' model requests saw the history the load checkpoint holds, not "other".
    assert seen == [["first", "second"], ["first", "second"]]
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.failure["name"] == "ConversationConflictError"
    assert snapshot.failure["retryable"] is False
    state = await task_state(absurd_dsn, absurd_queue, spawned["task_id"])
    assert state["attempts"] == 2
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["first", "other"]  # nothing overwritten


async def _failed(absurd: AsyncAbsurd, task_id: str) -> bool:
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state == "failed"


async def test_a_save_whose_checkpoint_was_lost_is_not_saved_twice(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    agent = AbsurdAgent(echo_agent(), absurd_client, conversation_store=store)
    conversation_id = new_id()
    await agent.run("first", conversation_id=conversation_id)
    attempts: list[int] = []

    @absurd_client.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        attempts.append(1)

        async def die_before_the_save_checkpoint(name: str) -> None:
            if len(attempts) == 1 and "conversation_save" in name:
                raise SimulatedCrash  # the store committed; the checkpoint never will

        with commit_hook(die_before_the_save_checkpoint):
            result = await agent.run("second", conversation_id=conversation_id)
        return {"output": result.output, "revision": result.conversation.revision}

    spawned = await absurd_client.spawn("chat-turn", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert len(attempts) == 2
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["first", "second"]
    assert len(loaded.messages) == 4
    assert snapshot.result["revision"] == loaded.revision


async def test_deferred_tool_requests_wait_on_the_record_for_the_next_turn(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    refunds: list[int] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for m in messages for p in m.parts if p.part_kind == "tool-return"]
        if returns:
            return ModelResponse(parts=[TextPart(f"refund: {returns[-1].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 30}, tool_call_id="refund-1")])

    inner = Agent(
        FunctionModel(respond, model_name="scripted"), name="support", output_type=[str, DeferredToolRequests]
    )

    @inner.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        refunds.append(amount)
        return f"{amount} EUR refunded"

    agent = AbsurdAgent(inner, absurd_client, conversation_store=store)

    @absurd_client.register_task(name="support-turn")
    async def support_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        approvals = params.get("approve")
        results = DeferredToolResults(approvals=dict.fromkeys(approvals, True)) if approvals else None
        result: AgentRunResult[Any] = await agent.run(
            params.get("message"), conversation_id=params["conversation_id"], deferred_tool_results=results
        )
        output = result.output
        if isinstance(output, DeferredToolRequests):
            return {"waiting_on": [call.tool_call_id for call in output.approvals]}
        return {"output": output}

    conversation_id = new_id()
    spawned = await absurd_client.spawn("support-turn", {"message": "refund me", "conversation_id": conversation_id})
    first = await run_until_done(absurd_client, spawned["task_id"])
    assert first.result == {"waiting_on": ["refund-1"]}
    record = await store.read_record(conversation_id)
    assert record is not None
    assert record.deferred_tool_requests is not None
    assert [call.tool_call_id for call in record.deferred_tool_requests.approvals] == ["refund-1"]
    spawned = await absurd_client.spawn("support-turn", {"approve": ["refund-1"], "conversation_id": conversation_id})
    second = await run_until_done(absurd_client, spawned["task_id"])
    assert second.result == {"output": "refund: 30 EUR refunded"}
    assert refunds == [30]
    record = await store.read_record(conversation_id)
    assert record is not None
    assert record.deferred_tool_requests is None


def test_private_result_hook_is_still_there() -> None:
    # `mark_saved` relies on it to update a result whose save was replayed from its checkpoint.
    assert callable(getattr(AgentRunResult, "_conversation_saved", None))


async def test_replayed_save_updates_the_result(store: PostgresConversationStore) -> None:
    from pydantic_ai_absurd.conversations._turn import mark_saved

    agent = AbsurdAgent(echo_agent(), conversation_store=store)
    result = await agent.run("x", conversation_id=new_id())
    mark_saved(result, "some-revision")
    assert result.conversation.revision == "some-revision"
    assert isinstance(result.conversation, Conversation)


async def test_two_concurrent_turns_of_one_conversation_give_exactly_one_conflict(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    import asyncio

    both_loaded = asyncio.Barrier(2)

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompts = prompts_of(messages)
        if len(prompts) > 1:  # the racing turns (not the first one): both have loaded before either saves
            await both_loaded.wait()
        return ModelResponse(parts=[TextPart(" | ".join(prompts))])

    agent = AbsurdAgent(
        Agent(FunctionModel(respond, model_name="scripted"), name="chat"), absurd_client, conversation_store=store
    )
    chat_task(absurd_client, agent)
    conversation_id = new_id()
    await agent.run("first", conversation_id=conversation_id)
    task_ids = [
        (await absurd_client.spawn("chat-turn", {"message": text, "conversation_id": conversation_id}))["task_id"]
        for text in ("left", "right")
    ]
    async with running_worker(absurd_client, concurrency=2):
        for task_id in task_ids:
            await wait_until(lambda task_id=task_id: _terminal(absurd_client, task_id))
    snapshots = [await absurd_client.fetch_task_result(task_id) for task_id in task_ids]
    states = sorted(s.state for s in snapshots if s is not None)
    assert states == ["completed", "failed"]
    failed = next(s for s in snapshots if s is not None and s.state == "failed")
    assert failed.failure["name"] == "ConversationConflictError"
    assert failed.failure["retryable"] is False
    winner = next(s for s in snapshots if s is not None and s.state == "completed")
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["first", winner.result["output"].split(" | ")[-1]]
    assert len(loaded.messages) == 4


async def _terminal(absurd: AsyncAbsurd, task_id: str) -> bool:
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}


async def test_a_finished_turn_replays_without_saving_again(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    seen: list[list[str]] = []
    agent = AbsurdAgent(echo_agent(seen), absurd_client, conversation_store=store)
    conversation_id = new_id()
    attempts: list[int] = []

    @absurd_client.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        attempts.append(1)
        result = await agent.run("hello", conversation_id=conversation_id)
        if len(attempts) == 1:
            raise SimulatedCrash  # after the save step: the retry replays the whole turn
        return {"output": result.output, "revision": result.conversation.revision}

    spawned = await absurd_client.spawn("chat-turn", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert len(seen) == 1  # the model ran once
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert len(loaded.messages) == 2
    assert snapshot.result == {"output": "hello", "revision": loaded.revision}


async def test_a_resumed_turn_sends_the_history_byte_for_byte(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    from pydantic_ai.messages import BinaryContent, ModelMessagesTypeAdapter, ToolReturnPart

    conversation_id = new_id()
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart(content=["see", BinaryContent(b"\x00\xffimg", media_type="image/png")])]),
        ModelResponse(parts=[ToolCallPart("fetch", {"zeta": 1, "alpha": {"b": 2, "a": 1}}, tool_call_id="f1")]),
        ModelRequest(parts=[ToolReturnPart("fetch", {"zz": b"\x01raw", "aa": "é"}, tool_call_id="f1")]),
        ModelResponse(parts=[TextPart("fetched")]),
    ]
    await store.save(Conversation(conversation_id=conversation_id, messages=history))
    stored = await store.load(conversation_id)
    assert stored is not None
    expected = ModelMessagesTypeAdapter.dump_json(stored.messages)
    sent: list[bytes] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        sent.append(ModelMessagesTypeAdapter.dump_json(messages[: len(history)]))
        return ModelResponse(parts=[TextPart("ok")])

    agent = AbsurdAgent(
        Agent(FunctionModel(respond, model_name="scripted"), name="chat"), absurd_client, conversation_store=store
    )
    attempts: list[int] = []

    @absurd_client.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        attempts.append(1)

        async def crash_once(name: str) -> None:
            if len(attempts) == 1 and "model.request" in name:
                raise SimulatedCrash

        with commit_hook(crash_once):
            result = await agent.run("next", conversation_id=conversation_id)
        return {"output": result.output}

    spawned = await absurd_client.spawn("chat-turn", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert sent == [expected, expected]  # first attempt (store-loaded) and resumed one (from the checkpoint)


async def test_conversation_limit_sends_a_window_and_saves_onto_the_whole(
    absurd_client: AsyncAbsurd, store: PostgresConversationStore
) -> None:
    seen: list[list[str]] = []
    agent = AbsurdAgent(echo_agent(seen), absurd_client, conversation_store=store, conversation_limit=2)
    conversation_id = new_id()
    for text in ("one", "two"):
        await agent.run(text, conversation_id=conversation_id)
    attempts: list[int] = []

    @absurd_client.register_task(name="chat-turn")
    async def chat_turn(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        attempts.append(1)

        async def crash_once(name: str) -> None:
            if len(attempts) == 1 and "model.request" in name:
                raise SimulatedCrash  # the retry saves from the checkpointed window

        with commit_hook(crash_once):
            result = await agent.run("three", conversation_id=conversation_id)
        return {"output": result.output}

    spawned = await absurd_client.spawn("chat-turn", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert seen[-2:] == [["two", "three"], ["two", "three"]]  # the last 2 stored messages, then the new prompt
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert prompts_of(loaded.messages) == ["one", "two", "three"]
    assert len(loaded.messages) == 6
