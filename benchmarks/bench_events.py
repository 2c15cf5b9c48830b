"""Benchmarks of the event log (`publish_events=True`, `stream_events`), offline, with scripted models.

Usage:
    python benchmarks/bench_events.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--quick] [--no-docs]

Creates a scratch database, measures, drops it, and writes the "Live run events" section of
docs/benchmarks.md (between the `events-benchmark` markers). `benchmarks/bench.py` runs it too.

Internal: `bench_events.py --readers DSN QUEUE TASK_ID N` runs N readers of one task in one process.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from bench_support import drain, quantile, replace_section, section_main
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, PartStartEvent, TextPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, setup, stream_events
from pydantic_ai_absurd._steps import run_step
from pydantic_ai_absurd.events._writer import StepPublisher, announce_execution

QUEUE = "bench_events"
START, END = "<!-- events-benchmark:start -->", "<!-- events-benchmark:end -->"


async def bench_latency(absurd: AsyncAbsurd, count: int) -> dict[str, float]:
    """Publish `count` single events (one write each) from a step; a reader records when each arrives."""

    @absurd.register_task(name="latency")
    async def latency(params: Any, ctx: Any) -> int:
        await announce_execution()

        async def body() -> int:
            publisher = StepPublisher.for_current_step()
            assert publisher is not None
            for i in range(count):
                await publisher.add(PartStartEvent(index=i, part=TextPart(content=repr(time.perf_counter()))))
                await asyncio.sleep(0.005)
            await publisher.close()
            return count

        return (await run_step("latency", body)).value

    spawned = await absurd.spawn("latency", {})
    task_id = str(spawned["task_id"])
    delays: list[float] = []

    async def read() -> None:
        async for item in stream_events(absurd, task_id):
            event = item.event
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                delays.append(time.perf_counter() - float(event.part.content))

    reader = asyncio.ensure_future(read())
    await drain(absurd, task_id)
    await asyncio.wait_for(reader, 60)
    return {"p50": quantile(delays, 0.5), "p99": quantile(delays, 0.99), "n": float(len(delays))}


PACE = 0.01
"""Seconds the paced model waits after every 10 deltas: 1,000 tokens/s, faster than any hosted model streams."""


def streaming_agent(absurd: AsyncAbsurd, words: int, publish: bool, paced: bool) -> AbsurdAgent[None, str]:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        for i in range(words):
            yield f"w{i} "
            if i % 10 == 9:
                await asyncio.sleep(PACE if paced else 0)  # a provider's stream yields to the loop now and then

    async def consume(ctx: Any, events: AsyncIterable[Any]) -> None:
        async for _ in events:
            pass

    inner = Agent(FunctionModel(stream_function=stream, model_name="scripted"), name="streamer")
    if publish:
        return AbsurdAgent(inner, absurd, publish_events=True)
    # The baseline streams the same answer through a durable handler that only consumes the events.
    return AbsurdAgent(inner, absurd, event_stream_handler=consume)


async def bench_stream(absurd: AsyncAbsurd, words: int, reps: int, dsn: str) -> dict[str, Any]:
    """Handler time of a 2,000-delta streamed answer with and without publishing, and with 20 live readers."""
    agents = {
        (flag, paced): streaming_agent(absurd, words, flag, paced) for flag in (False, True) for paced in (False, True)
    }
    times: dict[str, list[float]] = {
        "plain": [],
        "published": [],
        "published_20_readers": [],
        "unpaced_plain": [],
        "unpaced_published": [],
    }
    writes: list[int] = []

    @absurd.register_task(name="stream")
    async def stream_task(params: dict[str, Any], ctx: Any) -> float:
        agent = agents[bool(params["publish"]), bool(params["paced"])]
        started = time.perf_counter()
        await agent.run("go")
        return time.perf_counter() - started

    async def one(label: str, publish: bool, readers: int = 0, paced: bool = True) -> None:
        spawned = await absurd.spawn("stream", {"publish": publish, "paced": paced})
        task_id = str(spawned["task_id"])
        process = None
        if readers:
            process = subprocess.Popen(  # noqa: ASYNC220 - a benchmark helper
                [sys.executable, __file__, "--readers", dsn, QUEUE, task_id, str(readers)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "listening"
        await drain(absurd, task_id)
        snapshot = await absurd.fetch_task_result(task_id)
        assert snapshot is not None and snapshot.state == "completed", snapshot
        times[label].append(float(snapshot.result))  # type: ignore[arg-type]
        if process is not None:
            out, _ = process.communicate(timeout=60)
            assert json.loads(out)["events"] == [words + 4] * readers, out  # all readers saw the whole log
        if publish and paced:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute(
                    "select count(distinct xmin::text) from pydantic_ai_absurd.events where task_id = %s", (task_id,)
                )
                row = await cur.fetchone()
                writes.append(int(row[0]) if row else 0)

    for _ in range(reps):  # interleaved, so machine noise hits all three alike
        await one("plain", False)
        await one("published", True)
        await one("published_20_readers", True, readers=20)
        await one("unpaced_plain", False, paced=False)
        await one("unpaced_published", True, paced=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median": med,
        "overhead": med["published"] / med["plain"] - 1,
        "cpu_per_delta": (med["unpaced_published"] - med["unpaced_plain"]) / words,
        "readers_effect": med["published_20_readers"] / med["published"] - 1,
        "writes": statistics.median(writes),
        "reps": reps,
        "words": words,
    }


async def run_readers(dsn: str, queue: str, task_id: str, count: int) -> None:
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    started = asyncio.Event()
    ready = 0

    async def read() -> int:
        nonlocal ready
        seen = 0
        items = stream_events(absurd, task_id)
        async for _ in items:
            seen += 1
        return seen

    async def announce() -> None:
        nonlocal ready
        # Each reader has its own connection: ready once it has listened and read the (empty) backlog.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while ready < count:
                cur = await conn.execute(
                    "select count(*) from pg_stat_activity where datname = current_database() and state = 'idle'"
                    " and query like 'select seq, kind, event%%'"
                )
                row = await cur.fetchone()
                ready = int(row[0]) if row else 0
                await asyncio.sleep(0.01)
        started.set()

    tasks = [asyncio.ensure_future(read()) for _ in range(count)]
    await announce()
    print("listening", flush=True)
    seen = await asyncio.gather(*tasks)
    await absurd.close()
    print(json.dumps({"events": seen}), flush=True)


async def bench_events(dsn: str, quick: bool) -> dict[str, Any]:
    """All event-log measurements on `dsn` (a database with the schema installed)."""
    await setup(dsn, queues=[QUEUE])
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        latency = await bench_latency(absurd, 100 if quick else 400)
        stream = await bench_stream(absurd, 2000, 3 if quick else 7, dsn)
    finally:
        await absurd.close()
    return {"latency": latency, "stream": stream}


def render_events(r: dict[str, Any]) -> str:
    lat, st = r["latency"], r["stream"]
    med = st["median"]
    rows = [
        f"| publish → receive latency, p50 | {lat['p50'] * 1000:.2f} ms | {int(lat['n'])} events, one write each, "
        "reader in another task over LISTEN/NOTIFY | ≤ 50 ms: "
        f"{'met' if lat['p50'] <= 0.05 else 'missed'} |",
        f"| publish → receive latency, p99 | {lat['p99'] * 1000:.2f} ms |  | ≤ 200 ms: "
        f"{'met' if lat['p99'] <= 0.2 else 'missed'} |",
        f"| {st['words']}-delta streamed answer, `publish_events=False` | {med['plain'] * 1000:.1f} ms | handler time, "
        f"median of {st['reps']}; model paced at 1,000 deltas/s |  |",
        f"| same, `publish_events=True` | {med['published'] * 1000:.1f} ms | {st['writes']:.0f} writes of the log "
        f"per answer | overhead {st['overhead'] * 100:+.1f}%, target ≤ 10%: "
        f"{'met' if st['overhead'] <= 0.10 else 'missed'} |",
        f"| same, model streaming without pauses (CPU cost) | {med['unpaced_plain'] * 1000:.1f} → "
        f"{med['unpaced_published'] * 1000:.1f} ms | {st['cpu_per_delta'] * 1e6:.0f} µs per published delta |  |",
        f"| same, 20 live readers in another process | {med['published_20_readers'] * 1000:.1f} ms | every reader "
        f"received the whole log | {st['readers_effect'] * 100:+.1f}% vs no readers |",
    ]
    return "\n".join(
        [
            START,
            "## Live run events",
            "",
            "Measured by `benchmarks/bench_events.py` (also run by `bench.py`). Deltas are batched: a streamed answer",
            f"costs a few writes of the event log, not one per token (flush interval {0.2:.1f} s or 500 events).",
            "",
            "| measure | value | notes | target |",
            "|---|---|---|---|",
            *rows,
            END,
            "",
        ]
    )


def with_events_section(page: str, section: str) -> str:
    """`page` with its events section replaced by `section` (appended when it has none)."""
    return replace_section(page, section, START, END)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--readers":
        asyncio.run(run_readers(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
        return
    section_main(__doc__, "bench_events", bench_events, render_events, START, END)


if __name__ == "__main__":
    main()
