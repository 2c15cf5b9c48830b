"""Benchmarks of `PostgresConversationStore` on a local PostgreSQL (offline).

Usage:
    python benchmarks/bench_conversations.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--quick] [--no-docs]

Creates a scratch database, stores one conversation of 10,000 messages, measures loading its last 50
messages, loading all of it, and saving one more turn; drops the database and writes the "Conversations"
section of docs/benchmarks.md (between the `conversations-benchmark` markers). `benchmarks/bench.py` runs it too.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
from bench_support import replace_section, section_main
from pydantic_ai.conversation import Conversation
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart

from pydantic_ai_absurd import PostgresConversationStore, setup

START = "<!-- conversations-benchmark:start -->"
END = "<!-- conversations-benchmark:end -->"
BEFORE = "## What the numbers mean"
MESSAGES = 10_000
WINDOW = 50


def _turn(n: int) -> list[ModelMessage]:
    return [
        ModelRequest(parts=[UserPromptPart(content=f"Question {n}: what about the order status and the invoice?")]),
        ModelResponse(
            parts=[TextPart(content=f"Answer {n}: the order shipped yesterday; the invoice follows by e-mail.")],
            model_name="scripted",
        ),
    ]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        pos = p * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {"median": statistics.median(values), "p10": q(0.1), "p90": q(0.9), "n": len(values)}


class _Statements:
    """Counts statements sent through `psycopg.AsyncCursor.execute` while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.seen: Counter[str] = Counter()
        original = psycopg.AsyncCursor.execute
        counter = self

        async def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.on:
                text = query if isinstance(query, str) else repr(query)
                counter.seen[" ".join(text.split()[:3])] += 1
            return await original(cursor, query, *args, **kwargs)

        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]


async def _entry_rows(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("select count(*) from pydantic_ai_absurd.conversation_entries")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def bench_conversations(dsn: str, quick: bool) -> dict[str, Any]:
    """Load the last 50 of 10,000 messages, load all of them, save one more turn."""
    await setup(dsn)
    reps = 50 if quick else 200
    load_at_start = os.getloadavg()[0]
    statements = _Statements()
    async with PostgresConversationStore(dsn) as store:
        conversation = Conversation(conversation_id=f"bench-{secrets.token_hex(4)}")
        for n in range(MESSAGES // 2):
            conversation.messages.extend(_turn(n))
        started = time.perf_counter()
        await store.save(conversation)
        first_save = time.perf_counter() - started
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("analyze pydantic_ai_absurd.conversation_entries")
        cid = conversation.conversation_id

        window: list[float] = []
        for _ in range(reps):
            started = time.perf_counter()
            loaded = await store.load(cid, limit=WINDOW)
            window.append(time.perf_counter() - started)
            assert loaded is not None and len(loaded.messages) == WINDOW
        statements.on = True
        await store.load(cid, limit=WINDOW)
        statements.on = False
        load_statements = dict(statements.seen)
        statements.seen.clear()

        whole: list[float] = []
        for _ in range(3 if quick else 10):
            started = time.perf_counter()
            loaded = await store.load(cid)
            whole.append(time.perf_counter() - started)
            assert loaded is not None and len(loaded.messages) >= MESSAGES

        saves: list[float] = []
        written: list[int] = []
        for n in range(reps // 2):
            turn = await store.load(cid, limit=WINDOW)
            assert turn is not None
            turn.messages.extend(_turn(MESSAGES + n))
            before = await _entry_rows(dsn)
            statements.on = n == 0
            started = time.perf_counter()
            await store.save(turn)
            saves.append(time.perf_counter() - started)
            statements.on = False
            written.append(await _entry_rows(dsn) - before)
        save_statements = dict(statements.seen)
        turns = await _bench_turns(dsn, store, cid, 3 if quick else 10)
    return {
        **turns,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load_at_start,
        "messages": MESSAGES,
        "window": WINDOW,
        "first_save": first_save,
        "load_window": _summary(window),
        "load_statements": load_statements,
        "load_all": _summary(whole),
        "save_turn": _summary(saves),
        "save_rows": sorted(set(written)),
        "save_statements": save_statements,
    }


async def _bench_turns(dsn: str, store: PostgresConversationStore, cid: str, reps: int) -> dict[str, Any]:
    """One agent turn on the long conversation: plain (outside a task) and durable (inside a task)."""
    from absurd_sdk import AsyncAbsurd
    from pydantic_ai import Agent
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from pydantic_ai_absurd import AbsurdAgent

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("noted")])

    queue = "bench_conversations"
    await setup(dsn, queues=[queue])
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    agent = AbsurdAgent(Agent(FunctionModel(respond), name="chat"), absurd, conversation_store=store)
    windowed = AbsurdAgent(
        Agent(FunctionModel(respond), name="chat"), absurd, conversation_store=store, conversation_limit=WINDOW
    )
    durable: list[float] = []
    limited: list[float] = []
    plain: list[float] = []

    @absurd.register_task(name="turn")
    async def turn(params: Any, ctx: Any) -> None:
        started = time.perf_counter()
        await (windowed if params else agent).run("one more question", conversation_id=cid)
        (limited if params else durable).append(time.perf_counter() - started)

    try:
        for _ in range(reps):
            started = time.perf_counter()
            await agent.run("one more question", conversation_id=cid)
            plain.append(time.perf_counter() - started)
            await absurd.spawn("turn", None)
            await absurd.work_batch(claim_timeout=300, batch_size=1)
            await absurd.spawn("turn", True)
            await absurd.work_batch(claim_timeout=300, batch_size=1)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute(
                f'select max(length(state::text)) from absurd."c_{queue}" where checkpoint_name like %s',
                ("chat__conversation_load@%",),
            )
            row = await cursor.fetchone()
    finally:
        await absurd.close()
    assert len(durable) == len(limited) == reps
    return {
        "turn_plain": _summary(plain),
        "turn_durable": _summary(durable),
        "turn_limited": _summary(limited),
        "load_checkpoint": int(row[0] if row else 0),
    }


def _ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1000:.2f} ({s['p10'] * 1000:.2f} - {s['p90'] * 1000:.2f})"


def render_conversations(r: dict[str, Any]) -> str:
    """The conversations section of docs/benchmarks.md."""
    target = "met" if r["load_window"]["median"] < 0.020 else "**missed**"
    rows_ok = "met" if r["save_rows"] == [2] else "**missed**"
    rows = [
        (
            f"`load(limit={r['window']})` of a {r['messages']:,}-message conversation",
            f"{_ms(r['load_window'])} ms",
            f"{sum(r['load_statements'].values())} statements: the record, then one recursive query",
            f"< 20 ms: {target}",
        ),
        (f"`load()` of all {r['messages']:,} messages", f"{_ms(r['load_all'])} ms", "one recursive query", ""),
        (
            "`save()` of one more turn (2 messages) after a windowed load",
            f"{_ms(r['save_turn'])} ms",
            f"entry rows written per save: {', '.join(map(str, r['save_rows']))}; "
            f"{sum(r['save_statements'].values())} statements: the record read, then one transaction (lineage, "
            "lock, record `UPDATE`, parent check, one `INSERT` of the entries)",
            f"only the turn's messages: {rows_ok}",
        ),
        (f"first `save()` of all {r['messages']:,} messages", f"{r['first_save'] * 1000:.0f} ms", "one INSERT", ""),
        (
            "agent turn outside a task (`agent.run(..., conversation_id=)`)",
            f"{_ms(r['turn_plain'])} ms",
            "load all, scripted model call, save the turn",
            "",
        ),
        (
            "durable agent turn inside a task (handler time)",
            f"{_ms(r['turn_durable'])} ms",
            f"plus the load step's checkpoint ({r['load_checkpoint'] / 1e6:.1f} MB: it holds the whole history) and the save step",
            "",
        ),
        (
            f"durable agent turn with `conversation_limit={r['window']}`",
            f"{_ms(r['turn_limited'])} ms",
            f"the load step reads and checkpoints the last {r['window']} messages only",
            "",
        ),
    ]
    table = ["| measure | median (p10 - p90) | notes | target |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return f"""{START}
## Conversations

`PostgresConversationStore` with one conversation of {r["messages"]:,} messages (short user and assistant
texts) in the store, through its own connection pool (`benchmarks/bench_conversations.py`). A save is one
transaction: the lineage lock, the record `UPDATE` checked against the loaded revision, and one `INSERT`
of the turn's entries, whatever the length of the history. Loading a whole long history is dominated by
Pydantic validating the messages (about two thirds of the time here); the recursive query is the rest.

{chr(10).join(table)}

Measured on {r.get("date", "?")} (load average {r.get("load", 0.0):.1f} at start: other processes may share the
machine); `python benchmarks/bench_conversations.py` regenerates this section alone.
{END}
"""


def with_conversations_section(page: str, section: str) -> str:
    """`page` with its conversations section replaced by `section` (inserted before the explanations otherwise)."""
    return replace_section(page, section, START, END, before=BEFORE)


def main() -> None:
    section_main(__doc__, "bench_conv", bench_conversations, render_conversations, START, END, before=BEFORE)


if __name__ == "__main__":
    main()
