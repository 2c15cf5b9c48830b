"""One behaviour suite for `ConversationStore`, run against Pydantic AI's in-memory reference and ours."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from pydantic_ai.conversation import Conversation
from pydantic_ai.conversation_store import (
    ConversationConflict,
    ConversationEntry,
    ConversationRecord,
    ConversationStore,
    InMemoryConversationStore,
)
from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.tools import DeferredToolRequests
from pydantic_ai.usage import RequestUsage, RunUsage

from pydantic_ai_absurd import PostgresConversationStore


def turn(text: str) -> list[ModelMessage]:
    """One user message and its answer."""
    return [
        ModelRequest(parts=[UserPromptPart(content=text)]),
        ModelResponse(parts=[TextPart(content=f"answer to {text}")], model_name="scripted"),
    ]


def texts(messages: Sequence[ModelMessage]) -> list[str]:
    out: list[str] = []
    for message in messages:
        for part in message.parts:
            content = getattr(part, "content", None)
            if isinstance(content, str):
                out.append(content)
    return out


def dumped(messages: Sequence[ModelMessage]) -> bytes:
    return ModelMessagesTypeAdapter.dump_json(list(messages))


def new_id() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, absurd_dsn: str) -> AsyncIterator[ConversationStore]:
    if request.param == "memory":
        yield InMemoryConversationStore()
        return
    async with PostgresConversationStore(absurd_dsn) as pg:
        yield pg


async def saved(store: ConversationStore, *turns_: str, scope: str | None = None) -> Conversation:
    """A new conversation saved with the given turns, one save per turn, then loaded."""
    conversation_id = new_id()
    conversation = Conversation(conversation_id=conversation_id)
    for text in turns_:
        conversation.messages.extend(turn(text))
        await store.save(conversation, scope=scope)
    loaded = await store.load(conversation_id, scope=scope)
    assert loaded is not None
    return loaded


async def test_save_and_load_roundtrip_is_byte_identical(store: ConversationStore) -> None:
    conversation_id = new_id()
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart(content=["look", BinaryContent(b"\x00\x01png", media_type="image/png")])]),
        ModelResponse(parts=[ToolCallPart("lookup", {"z": 1, "a": [1, 2], "m": {"y": 1, "b": 2}}, tool_call_id="c1")]),
        ModelRequest(parts=[ToolReturnPart("lookup", {"zeta": "é", "alpha": 2}, tool_call_id="c1")]),
        ModelResponse(parts=[TextPart("done")], usage=RequestUsage(input_tokens=3)),
    ]
    conversation = Conversation(conversation_id=conversation_id, messages=messages, usage=RunUsage(requests=2))
    entries = await store.save(conversation)
    assert len(entries) == 4
    assert conversation.revision is not None
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert dumped(loaded.messages) == dumped(messages)
    assert loaded.usage == RunUsage(requests=2)
    assert loaded.revision == conversation.revision
    assert await store.load(new_id()) is None


async def test_limit_loads_the_last_messages(store: ConversationStore) -> None:
    loaded = await saved(store, "one", "two", "three")
    window = await store.load(loaded.conversation_id, limit=3)
    assert window is not None
    assert texts(window.messages) == ["answer to two", "three", "answer to three"]
    assert texts((await store.load(loaded.conversation_id, limit=100) or loaded).messages) == texts(loaded.messages)
    empty = await store.load(loaded.conversation_id, limit=0)
    assert empty is not None
    assert empty.messages == []
    with pytest.raises(Exception, match="must not be negative"):
        await store.load(loaded.conversation_id, limit=-1)
    # Saving a windowed load still appends to the whole conversation.
    window.messages.extend(turn("four"))
    await store.save(window)
    whole = await store.load(loaded.conversation_id)
    assert whole is not None
    assert texts(whole.messages)[-2:] == ["four", "answer to four"]
    assert len(whole.messages) == 8


async def test_save_appends_only_new_messages(store: ConversationStore) -> None:
    loaded = await saved(store, "one")
    before = await store.load_entries(loaded.conversation_id)
    assert before is not None
    loaded.messages.extend(turn("two"))
    entries = await store.save(loaded)
    assert [texts([e.message]) for e in entries] == [["two"], ["answer to two"]]
    assert entries[0].parent_id == before[-1].id
    after = await store.load_entries(loaded.conversation_id)
    assert after is not None
    assert [e.id for e in after[:2]] == [e.id for e in before]
    # Nothing new: nothing stored, the revision still advances.
    revision = loaded.revision
    assert await store.save(loaded) == []
    assert loaded.revision != revision


async def test_compaction_rewrites_history_and_keeps_the_old_branch(store: ConversationStore) -> None:
    loaded = await saved(store, "one", "two")
    old = await store.load_entries(loaded.conversation_id)
    assert old is not None
    summary = ModelRequest(parts=[UserPromptPart(content="summary of one and two")])
    compacted = Conversation(
        conversation_id=loaded.conversation_id, messages=[summary, *turn("three")], revision=loaded.revision
    )
    await store.save(compacted)
    now = await store.load(loaded.conversation_id)
    assert now is not None
    assert texts(now.messages) == ["summary of one and two", "three", "answer to three"]
    record = await store.read_record(loaded.conversation_id)
    assert record is not None
    assert record.branches == [old[-1].id]
    # The old history is still stored and can be branched back to.
    back = await store.branch(loaded.conversation_id, from_entry=old[-1].id, expected_revision=now.revision)
    assert texts(back.messages) == texts(loaded.messages)


async def test_branch_keeps_earlier_turns_and_can_switch_back(store: ConversationStore) -> None:
    loaded = await saved(store, "one", "two")
    tip = (await store.load_entries(loaded.conversation_id) or [])[-1]
    branched = await store.branch(loaded.conversation_id, at=2, expected_revision=loaded.revision)
    assert texts(branched.messages) == ["one", "answer to one"]
    branched.messages.extend(turn("two again"))
    await store.save(branched)
    current = await store.load(loaded.conversation_id)
    assert current is not None
    assert texts(current.messages)[2:] == ["two again", "answer to two again"]
    record = await store.read_record(loaded.conversation_id)
    assert record is not None
    assert record.branches == [tip.id]
    with pytest.raises(ConversationConflict):
        await store.branch(loaded.conversation_id, at=1, expected_revision=loaded.revision)
    back = await store.branch(loaded.conversation_id, from_entry=tip.id, expected_revision=current.revision)
    assert texts(back.messages) == texts(loaded.messages)


async def test_fork_shares_entries_and_both_continue(store: ConversationStore) -> None:
    loaded = await saved(store, "one", "two")
    source = await store.load_entries(loaded.conversation_id)
    assert source is not None
    fork_id = new_id()
    fork = await store.fork(loaded.conversation_id, at=2, new_conversation_id=fork_id)
    assert fork.conversation_id == fork_id
    assert texts(fork.messages) == ["one", "answer to one"]
    fork.messages.extend(turn("fork turn"))
    await store.save(fork)
    loaded.messages.extend(turn("three"))
    await store.save(loaded)
    fork_entries = await store.load_entries(fork_id)
    assert fork_entries is not None
    assert [e.id for e in fork_entries[:2]] == [e.id for e in source[:2]]
    record = await store.read_record(fork_id)
    assert record is not None
    assert (record.forked_from, record.forked_at) == (loaded.conversation_id, source[1].id)
    assert texts((await store.load(loaded.conversation_id) or fork).messages)[-1] == "answer to three"
    with pytest.raises(ConversationConflict):
        await store.fork(loaded.conversation_id, new_conversation_id=fork_id)


async def test_delete_keeps_what_forks_point_into(store: ConversationStore) -> None:
    loaded = await saved(store, "one", "two")
    fork = await store.fork(loaded.conversation_id, at=4, new_conversation_id=new_id())
    fork_of_fork = await store.fork(fork.conversation_id, at=2, new_conversation_id=new_id())
    await store.delete(loaded.conversation_id)
    assert await store.load(loaded.conversation_id) is None
    kept = await store.load(fork.conversation_id)
    assert kept is not None
    assert texts(kept.messages) == texts(loaded.messages)
    await store.delete(fork.conversation_id)
    deep = await store.load(fork_of_fork.conversation_id)
    assert deep is not None
    assert texts(deep.messages) == ["one", "answer to one"]
    await store.delete(fork_of_fork.conversation_id)
    assert await store.load(fork_of_fork.conversation_id) is None
    await store.delete(fork_of_fork.conversation_id)  # deleting what is gone is a no-op


async def test_scopes_keep_conversations_to_their_owner(store: ConversationStore) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    first = await saved(store, "hi", scope=alice)
    second = await saved(store, "hello", scope=alice)
    third = await saved(store, "hey", scope=bob)
    assert await store.load(first.conversation_id, scope=bob) is None
    assert await store.load(first.conversation_id) is not None  # no scope reaches every scope
    first.messages.extend(turn("more"))
    with pytest.raises(ConversationConflict):
        await store.save(first, scope=bob)
    listed = await store.list_conversations(scope=alice)
    assert [r.conversation_id for r in listed] == [second.conversation_id, first.conversation_id]
    assert [r.conversation_id for r in await store.list_conversations(scope=alice, limit=1)] == [second.conversation_id]
    assert [r.conversation_id for r in await store.list_conversations(scope=bob)] == [third.conversation_id]
    await store.delete(third.conversation_id, scope=alice)  # another owner's delete leaves it alone
    assert await store.load(third.conversation_id) is not None
    # Without a scope, every scope's conversations are listed, newest first: filtered to this test's, as other
    # test processes save into the same tables meanwhile (the newest two overall may be theirs).
    ours = {first.conversation_id, second.conversation_id, third.conversation_id}
    everyone = [r.conversation_id for r in await store.list_conversations()]
    assert [c for c in everyone if c in ours] == [third.conversation_id, second.conversation_id, first.conversation_id]
    assert len(await store.list_conversations(limit=2)) == 2


async def test_record_fields_roundtrip(store: ConversationStore) -> None:
    conversation_id = new_id()
    requests = DeferredToolRequests(
        approvals=[ToolCallPart("refund", {"amount": 10}, tool_call_id="r1")], metadata={"r1": {"why": "big"}}
    )
    conversation = Conversation(
        conversation_id=conversation_id,
        messages=turn("refund me"),
        usage=RunUsage(requests=1, input_tokens=5, tool_calls=2),
        deferred_tool_requests=requests,
    )
    await store.save(conversation, scope="tenant")
    record = await store.read_record(conversation_id)
    assert record is not None
    assert record.deferred_tool_requests == requests
    assert record.usage == RunUsage(requests=1, input_tokens=5, tool_calls=2)
    assert record.scope == "tenant"
    loaded = await store.load(conversation_id)
    assert loaded is not None
    assert loaded.deferred_tool_requests == requests


async def test_stale_revision_conflicts_and_leaves_nothing_behind(store: ConversationStore) -> None:
    loaded = await saved(store, "one")
    lost = f"lost {loaded.conversation_id}"
    stale = replace(loaded, messages=[*loaded.messages, *turn(lost)])
    loaded.messages.extend(turn("two"))
    await store.save(loaded)
    before = await store.load_entries(loaded.conversation_id)
    with pytest.raises(ConversationConflict):
        await store.save(stale)
    assert await store.load_entries(loaded.conversation_id) == before
    if isinstance(store, PostgresConversationStore):
        assert await entry_count(store, lost) == 0
    with pytest.raises(ConversationConflict):
        await store.save(Conversation(conversation_id=loaded.conversation_id, messages=turn("again")))


class RacingStore(PostgresConversationStore):
    """Holds every `write_record` at a barrier, so two saves both pass the revision check before either writes."""

    barrier: asyncio.Barrier | None = None

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        if self.barrier is not None:
            await self.barrier.wait()
        await super().write_record(record, new_entries=new_entries, expected_revision=expected_revision)


class RacingMemoryStore(InMemoryConversationStore):
    barrier: asyncio.Barrier | None = None

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        if self.barrier is not None:
            await self.barrier.wait()
        await super().write_record(record, new_entries=new_entries, expected_revision=expected_revision)


@pytest.mark.parametrize("kind", ["memory", "postgres"])
@pytest.mark.parametrize("existing", [True, False], ids=["append", "create"])
async def test_two_saves_racing_on_one_revision(absurd_dsn: str, kind: str, existing: bool) -> None:
    barrier = asyncio.Barrier(2)
    if kind == "memory":
        shared = RacingMemoryStore()
        stores: list[ConversationStore] = [shared, shared]
    else:
        # Two stores, two pools: the two saves run on two Postgres connections.
        stores = [RacingStore(absurd_dsn), RacingStore(absurd_dsn)]
    try:
        conversation_id = new_id()
        base = Conversation(conversation_id=conversation_id, messages=turn("base"))
        if existing:
            await stores[0].save(base)
        for each in stores:
            each.barrier = barrier  # type: ignore[attr-defined]
        copies = [replace(base, messages=[*base.messages, *turn(f"writer {n} {conversation_id}")]) for n in (0, 1)]
        if not existing:
            copies = [
                Conversation(conversation_id=conversation_id, messages=turn(f"writer {n} {conversation_id}"))
                for n in (0, 1)
            ]
        outcomes = await asyncio.gather(
            *(each.save(copy) for each, copy in zip(stores, copies, strict=True)), return_exceptions=True
        )
        conflicts = [o for o in outcomes if isinstance(o, ConversationConflict)]
        assert len(conflicts) == 1, outcomes
        winner = next(n for n, o in enumerate(outcomes) if not isinstance(o, BaseException))
        for each in stores:
            each.barrier = None  # type: ignore[attr-defined]
        loaded = await stores[0].load(conversation_id)
        assert loaded is not None
        expected = copies[winner].messages
        assert dumped(loaded.messages) == dumped(expected)
        if isinstance(stores[0], PostgresConversationStore):
            loser = 1 - winner
            assert await entry_count(stores[0], f"writer {loser} {conversation_id}") == 0
            assert await entry_count(stores[0], f"writer {winner} {conversation_id}") == 1
    finally:
        for each in stores:
            if isinstance(each, PostgresConversationStore):
                await each.close()


async def test_history_of_ten_thousand_messages_loads_in_one_query(absurd_dsn: str) -> None:
    async with PostgresConversationStore(absurd_dsn) as store:
        conversation = Conversation(conversation_id=new_id())
        for n in range(2500):
            conversation.messages.extend([*turn(f"q{n}"), *turn(f"r{n}")])
        await store.save(conversation)
        try:
            statements = count_statements()
            with statements:
                window = await store.load(conversation.conversation_id, limit=50)
            assert window is not None
            assert len(window.messages) == 50
            assert texts(window.messages)[-1] == "answer to r2499"
            assert statements.count == 2  # the record, then the history
            whole = await store.load_entries(conversation.conversation_id)
            assert whole is not None
            assert len(whole) == 10_000
        finally:
            await store.delete(conversation.conversation_id)  # the shared tables do not grow by 10,000 a run


async def test_missing_tables_raise_a_clear_error(absurd_dsn: str) -> None:
    from pydantic_ai_absurd.errors import SchemaNotInstalledError

    name = f"conv_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await conn.execute(f"create database {name}")
    try:
        info = psycopg.conninfo.conninfo_to_dict(absurd_dsn)
        info["dbname"] = name
        async with PostgresConversationStore(psycopg.conninfo.make_conninfo(**info)) as store:  # pyright: ignore[reportArgumentType]
            with pytest.raises(SchemaNotInstalledError, match="conversation tables are missing"):
                await store.load("x")
    finally:
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            await conn.execute(f"drop database if exists {name} with (force)")


async def test_store_shares_an_existing_pool(absurd_dsn: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(absurd_dsn, min_size=1, max_size=2, open=False) as pool:
        store = PostgresConversationStore(pool)
        loaded = await saved(store, "pooled")
        assert texts(loaded.messages) == ["pooled", "answer to pooled"]
        await store.close()  # leaves the pool it was given open
        assert not pool.closed


# -- helpers ----------------------------------------------------------------------------------------------------


async def entry_count(store: PostgresConversationStore, text: str) -> int:
    async with store._connection() as conn:  # pyright: ignore[reportPrivateUsage]
        cursor = await conn.execute(
            "select count(*) from pydantic_ai_absurd.conversation_entries where message like %s", (f'%"{text}"%',)
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


class count_statements:
    """Counts statements sent through `psycopg.AsyncCursor.execute` inside the `with` block."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Any = None

    def __enter__(self) -> count_statements:
        self._original = original = psycopg.AsyncCursor.execute
        counter = self

        async def execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(cursor, *args, **kwargs)

        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg.AsyncCursor.execute = self._original  # type: ignore[method-assign]


async def test_delete_collects_the_entries_no_conversation_reaches(absurd_dsn: str) -> None:
    async with PostgresConversationStore(absurd_dsn) as store:
        tag = uuid.uuid4().hex[:8]
        source = await saved(store, f"a1 {tag}", f"a2 {tag}")
        fork = await store.fork(source.conversation_id, at=2, new_conversation_id=new_id())
        fork.messages.extend(turn(f"f1 {tag}"))
        await store.save(fork)
        await store.delete(source.conversation_id)
        assert await entry_count(store, f"a2 {tag}") == 0  # only the deleted conversation reached it
        assert await entry_count(store, f"a1 {tag}") == 1  # the fork still does
        assert await entry_count(store, f"f1 {tag}") == 1
        await store.delete(fork.conversation_id)
        assert await entry_count(store, f"a1 {tag}") == 0
        assert await entry_count(store, f"f1 {tag}") == 0


class DeletingBeforeWrite(PostgresConversationStore):
    """Deletes `victim` through another store (another connection) right before its own `write_record`."""

    victim: tuple[PostgresConversationStore, str] | None = None

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        if self.victim is not None:
            other, conversation_id = self.victim
            self.victim = None
            await other.delete(conversation_id)
        await super().write_record(record, new_entries=new_entries, expected_revision=expected_revision)


async def test_a_fork_of_a_conversation_deleted_meanwhile_conflicts(absurd_dsn: str) -> None:
    async with PostgresConversationStore(absurd_dsn) as other, DeletingBeforeWrite(absurd_dsn) as store:
        source = await saved(store, "doomed")
        store.victim = (other, source.conversation_id)
        fork_id = new_id()
        with pytest.raises(ConversationConflict):
            await store.fork(source.conversation_id, new_conversation_id=fork_id)
        assert await store.read_record(fork_id) is None
