"""Benchmarks of pydantic-ai-absurd on a local PostgreSQL (offline, scripted models).

Usage:
    python benchmarks/bench.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--quick] [--no-docs]

The DSN names a server and a database to connect to for administration; the benchmark creates its own
scratch database on that server (random name), installs Absurd's schema there, and drops it at the end.
Results are printed as a table and written to docs/benchmarks.md (unless --no-docs).

`--scale-only [--dbos-python PY] [--src DIR]` runs the scale benchmarks of `bench_scale.py` (many concurrent runs
per worker, connections, statements of an idle worker, tasks/s, per-step overhead) instead.

Internal: `bench.py --worker DSN QUEUE STATE_DIR` runs one worker process (used by items 5 and 7).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from pydantic_ai_absurd import AbsurdAgent, run_worker, setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_children import END as CHILDREN_END
from bench_children import START as CHILDREN_START
from bench_conversations import bench_conversations, render_conversations, with_conversations_section
from bench_events import bench_events, render_events, with_events_section
from bench_scale import END as SCALE_END
from bench_scale import START as SCALE_START
from bench_support import drain, marked_section, replace_section, scratch_database, summary
from bench_transactions import bench_transactions, render_transactions, with_transactions_section

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
NO_LIMITS = UsageLimits(request_limit=None)


# -- the scripted agent -----------------------------------------------------------------------------------------


def scripted_agent(turns: int, *, name: str, tool_sleep: float = 0.0, on_tool: Callable[[], None] | None = None):
    """An agent whose model calls the `work` tool `turns` times, then answers: 2 * turns + 1 durable steps."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        if turn < turns:
            return ModelResponse(parts=[ToolCallPart("work", {"i": turn}, tool_call_id=f"call-{turn}")])
        return ModelResponse(parts=[TextPart(f"done after {turn} tool calls")])

    inner = Agent(FunctionModel(respond, model_name="scripted"), name=name)

    @inner.tool
    async def work(ctx: RunContext[None], i: int) -> str:
        if on_tool is not None:
            on_tool()
        if tool_sleep:
            await asyncio.sleep(tool_sleep)
        return f"result {i}"

    return inner, AbsurdAgent(inner)


def bench_digest(turns: int, reps: int) -> dict[str, Any]:
    """Time `asked_for` (the replay digest) for every model request and tool call of a finished run."""
    from pydantic_ai.durable_exec import ModelRequestId, ToolsetCallToolId
    from pydantic_ai.messages import ModelRequest

    from pydantic_ai_absurd._digest import DigestChain, asked_for

    inner, _ = scripted_agent(turns, name="digest")
    messages = inner.run_sync("go", usage_limits=NO_LIMITS).all_messages()
    model_id = ModelRequestId(model_id=None, streaming=False, model_name="scripted")
    tool_id = ToolsetCallToolId("function", toolset_id="<agent>")
    # The engine hands each request the run's growing history: the same message objects, one more turn each.
    requests = [messages[: i + 1] for i, m in enumerate(messages) if isinstance(m, ModelRequest)]
    calls = [part.args_as_dict() for m in messages if isinstance(m, ModelResponse) for part in m.tool_calls]
    per_run: list[float] = []
    for _ in range(reps):
        chain = DigestChain()  # one per agent run, as in the engine
        start = time.perf_counter()
        for prefix in requests:
            asked_for(model_id, (None, prefix, None, None), chain)
        for args in calls:
            asked_for(tool_id, ("work", args))
        per_run.append(time.perf_counter() - start)
    return {"per_run": summary(per_run), "steps": len(requests) + len(calls)}


# -- statistics -------------------------------------------------------------------------------------------------


# -- SQL statement counting (benchmark only) ----------------------------------------------------------------------


class StatementCounter:
    """Counts `AsyncCursor.execute` calls (every statement the SDK sends goes through it) while enabled."""

    def __init__(self) -> None:
        self.enabled = False
        self.statements: Counter[str] = Counter()
        self.seconds = 0.0
        self.by_statement: dict[str, list[float]] = {}
        self._original: Any = None

    def install(self) -> None:
        self._original = psycopg.AsyncCursor.execute
        counter = self

        async def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if not counter.enabled:
                return await counter._original(cursor, query, *args, **kwargs)
            label = _statement_label(query if isinstance(query, str) else repr(query))
            counter.statements[label] += 1
            start = time.perf_counter()
            try:
                return await counter._original(cursor, query, *args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                counter.seconds += elapsed
                counter.by_statement.setdefault(label, []).append(elapsed)

        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        self.statements = Counter()
        self.seconds = 0.0
        self.enabled = True
        try:
            yield self.statements
        finally:
            self.enabled = False


def _statement_label(text: str) -> str:
    if "absurd." in text:
        return "absurd." + text.split("absurd.", 1)[1].split("(", 1)[0].strip()
    return " ".join(text.split()[:3])


# -- database ---------------------------------------------------------------------------------------------------


async def count_checkpoints(conn: psycopg.AsyncConnection[Any], task_id: str) -> int:
    cursor = await conn.execute(f'select count(*) from absurd."c_{QUEUE}" where task_id = %s', (task_id,))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


# -- items 1-4 and 6: in-process ----------------------------------------------------------------------------------


async def bench_in_process(dsn: str, cfg: dict[str, Any], counter: StatementCounter) -> dict[str, Any]:
    results: dict[str, Any] = {}
    turns: int = cfg["turns"]
    inner, agent = scripted_agent(turns, name="bench")
    long_inner, long_agent = scripted_agent(cfg["long_turns"], name="long")
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    timings: dict[str, list[float]] = {}
    counts: dict[str, Counter[str]] = {}
    seen: set[str] = set()

    @absurd.register_task(name="durable")
    async def durable(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        with counter.counting() as statements:
            start = time.perf_counter()
            await agent.run("go", usage_limits=NO_LIMITS)
            elapsed = time.perf_counter() - start
        timings.setdefault(params["label"], []).append(elapsed)
        timings.setdefault(params["label"] + ":sql", []).append(counter.seconds)
        counts[params["label"]] = Counter(statements)
        return {}

    @absurd.register_task(name="replay")
    async def replay(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        target = long_agent if params["long"] else agent
        first = ctx.task_id not in seen
        seen.add(ctx.task_id)
        with counter.counting() as statements:
            start = time.perf_counter()
            await target.run("go", usage_limits=NO_LIMITS)
            elapsed = time.perf_counter() - start
        label = params["label"] + (":first" if first else ":replay")
        timings.setdefault(label, []).append(elapsed)
        counts[label] = Counter(statements)
        if first:
            raise RuntimeError("benchmark: fail attempt 1 so that attempt 2 replays the whole run")
        return {}

    async def plain(target: Agent[None, str], reps: int) -> list[float]:
        out: list[float] = []
        for _ in range(reps):
            start = time.perf_counter()
            await target.run("go", usage_limits=NO_LIMITS)
            out.append(time.perf_counter() - start)
        return out

    async def durable_runs(label: str, reps: int) -> str:
        task_id = ""
        for _ in range(reps):
            spawned = await absurd.spawn("durable", {"label": label})
            task_id = str(spawned["task_id"])
            await drain(absurd, task_id)
        return task_id

    try:
        # warm-up (imports, pydantic schemas, connection)
        await plain(inner, 3)
        await durable_runs("warmup", 3)
        counter.by_statement = {}

        # 1. plain run; 2. durable run (interleaved blocks to spread drift evenly)
        plain_times: list[float] = []
        durable_times: list[float] = []
        sql_times: list[float] = []
        for _ in range(cfg["blocks"]):
            plain_times += await plain(inner, cfg["reps"])
            timings.pop("durable", None)
            last_task = await durable_runs("durable", cfg["reps"])
            durable_times += timings["durable"]
            sql_times += timings["durable:sql"]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            steps = await count_checkpoints(conn, last_task)
        results["steps"] = steps
        results["turns"] = turns
        results["plain"] = summary(plain_times)
        results["durable"] = summary(durable_times)
        plain_median = statistics.median(plain_times)
        results["per_step"] = summary([(d - plain_median) / steps for d in durable_times])
        results["sql_per_step"] = summary([t / steps for t in sql_times])
        results["sql_by_statement"] = {k: summary(v) for k, v in counter.by_statement.items()}
        counter.by_statement = {}

        # 3. raw INSERT + COMMIT (autocommit) and a SELECT 1 round trip, through psycopg's async driver
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("create table if not exists bench_scratch (id bigserial primary key, payload text)")
            payload = json.dumps({"json": '{"parts":[{"content":"result 1","part_kind":"tool-return"}]}'})
            insert_times: list[float] = []
            select_times: list[float] = []
            for _ in range(50):
                await conn.execute("insert into bench_scratch (payload) values (%s)", (payload,))
            for _ in range(cfg["inserts"]):
                start = time.perf_counter()
                await conn.execute("insert into bench_scratch (payload) values (%s)", (payload,))
                insert_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                await conn.execute("select 1")
                select_times.append(time.perf_counter() - start)
        results["insert"] = summary(insert_times)
        results["select1"] = summary(select_times)

        # 4. statements per new step (first run) and per replayed step
        timings.pop("count", None)
        spawned = await absurd.spawn("replay", {"label": "count", "long": False}, max_attempts=2)
        await drain(absurd, str(spawned["task_id"]))
        results["sql_new"] = dict(counts["count:first"])
        results["sql_replay"] = dict(counts["count:replay"])

        # 6. replay of a long run vs the plain run of the same agent
        long_plain = await plain(long_inner, cfg["long_reps"])
        first_runs: list[float] = []
        replays: list[float] = []
        long_steps = 0
        for i in range(cfg["long_reps"]):
            label = f"long{i}"
            spawned = await absurd.spawn("replay", {"label": label, "long": True}, max_attempts=2)
            await drain(absurd, str(spawned["task_id"]))
            first_runs += timings[f"{label}:first"]
            replays += timings[f"{label}:replay"]
            if not long_steps:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    long_steps = await count_checkpoints(conn, str(spawned["task_id"]))
        long_plain += await plain(long_inner, 1)
        results["long"] = {
            "steps": long_steps,
            "plain": summary(long_plain),
            "first": summary(first_runs),
            "replay": summary(replays),
            "sql_replay": dict(counts[f"long{cfg['long_reps'] - 1}:replay"]),
        }
    finally:
        await absurd.close()
    return results


# -- items 5 and 7: worker processes ------------------------------------------------------------------------------


def worker_main(dsn: str, queue: str, state: Path) -> None:
    """One worker process: `run_worker` with the benchmark's tasks registered."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    _, short_agent = scripted_agent(1, name="short")
    marker = state / f"started-{os.getpid()}"
    _, slow_agent = scripted_agent(4, name="slow", tool_sleep=0.5, on_tool=lambda: marker.touch())

    @absurd.register_task(name="short")
    async def short(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        result = await short_agent.run("go", usage_limits=NO_LIMITS)
        return {"output": result.output}

    @absurd.register_task(name="slow")
    async def slow(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        (state / f"claimed-{os.getpid()}-{time.time()}").touch()
        result = await slow_agent.run("go", usage_limits=NO_LIMITS)
        return {"output": result.output, "pid": os.getpid()}

    async def run() -> None:
        try:
            await run_worker(
                absurd,
                concurrency=int(os.environ.get("BENCH_CONCURRENCY", "4")),
                poll_interval=float(os.environ.get("BENCH_POLL_INTERVAL", "0.5")),
                health_file=state / f"health-{os.getpid()}",
            )
        finally:
            await absurd.close()

    asyncio.run(run())


class Workers:
    def __init__(self, dsn: str, state: Path, *, poll_interval: float) -> None:
        self.dsn = dsn
        self.state = state
        self.poll_interval = poll_interval
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int, concurrency: int = 4) -> list[subprocess.Popen[bytes]]:
        env = {**os.environ, "BENCH_CONCURRENCY": str(concurrency), "BENCH_POLL_INTERVAL": str(self.poll_interval)}
        log = (self.state / "workers.log").open("ab")
        new = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", self.dsn, QUEUE, str(self.state)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
            for _ in range(n)
        ]
        self.procs += new
        deadline = time.monotonic() + 60
        while not all((self.state / f"health-{p.pid}").exists() for p in new):
            if time.monotonic() > deadline or any(p.poll() is not None for p in new):
                raise RuntimeError(f"worker did not start; see {self.state / 'workers.log'}")
            time.sleep(0.05)
        return new

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


async def bench_throughput(dsn: str, cfg: dict[str, Any], state: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for n_workers in (1, 2, 4):
                rates: list[float] = []
                for _ in range(cfg["throughput_trials"]):
                    workers = Workers(dsn, state, poll_interval=0.1)
                    try:
                        workers.start(n_workers, concurrency=4)
                        n = cfg["tasks"]
                        start = time.perf_counter()
                        ids = [str((await absurd.spawn("short", {}, queue=QUEUE))["task_id"]) for _ in range(n)]
                        while True:
                            cursor = await conn.execute(
                                f"select count(*) filter (where state = 'completed'), "
                                f"count(*) filter (where state in ('failed', 'cancelled')) "
                                f'from absurd."t_{QUEUE}" where task_id = any(%s::uuid[])',
                                (ids,),
                            )
                            row = await cursor.fetchone()
                            assert row is not None
                            if row[1]:
                                raise RuntimeError("a throughput task failed")
                            if row[0] == n:
                                break
                            await asyncio.sleep(0.02)
                        rates.append(n / (time.perf_counter() - start))
                    finally:
                        workers.stop_all()
                out[n_workers] = summary(rates)
    finally:
        await absurd.close()
    return out


def _files(state: Path, pattern: str) -> list[Path]:
    return list(state.glob(pattern))


async def bench_crash_recovery(
    dsn: str, cfg: dict[str, Any], state: Path, *, worker_dsn: str | None = None
) -> dict[str, Any]:
    """Item 7; `worker_dsn`: where the workers connect (e.g. through PgBouncer), when not `dsn`."""
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    to_done: list[float] = []
    to_claim: list[float] = []
    workers = Workers(worker_dsn or dsn, state, poll_interval=0.5)  # run_worker defaults: claim_timeout=10, poll 0.5 s
    try:
        workers.start(2)
        for _ in range(cfg["crash_trials"]):
            for f in _files(state, "started-*"):
                f.unlink()
            for f in _files(state, "claimed-*"):
                f.unlink()
            task_id = str((await absurd.spawn("slow", {}, max_attempts=5, queue=QUEUE))["task_id"])
            deadline = time.monotonic() + 30
            victim = None
            while victim is None:
                started = list(_files(state, "started-*"))
                if started:
                    victim = int(started[0].name.split("-", 1)[1])
                elif time.monotonic() > deadline:
                    raise RuntimeError("slow task did not start")
                else:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.75)  # inside the second tool call
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            proc = next(p for p in workers.procs if p.pid == victim)
            proc.wait()
            workers.procs.remove(proc)
            while True:
                snapshot = await absurd.fetch_task_result(task_id)
                if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
                    break
                if time.time() - killed_at > 60:
                    raise RuntimeError("task was not recovered within 60 s")
                await asyncio.sleep(0.02)
            done_at = time.time()
            if snapshot.state != "completed":
                raise RuntimeError(f"recovered task ended {snapshot.state}")
            claims = [
                float(f.name.split("-", 2)[2])
                for f in _files(state, "claimed-*")
                if f.name.split("-")[1] != str(victim)
            ]
            to_done.append(done_at - killed_at)
            if claims:
                to_claim.append(min(claims) - killed_at)
            workers.start(1)  # replace the killed worker, as an orchestrator would
    finally:
        workers.stop_all()
        await absurd.close()
    return {
        "to_done": summary(to_done),
        "to_claim": summary(to_claim) if to_claim else None,
        "max_done": max(to_done),
        "max_claim": max(to_claim) if to_claim else None,
        "raw": to_done,
    }


# -- inbox: pending() with 10,000 waiting requests ---------------------------------------------------------------

INBOX_QUEUE = "bench_inbox"


async def bench_inbox(dsn: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`Inbox.pending()` / `get()` / `approve()` over N open requests of N live tasks, plus N answered rows."""
    from pydantic_ai_absurd import Inbox

    n = cfg["inbox_requests"]
    reps = cfg["inbox_reps"]
    await setup(dsn, queues=[INBOX_QUEUE])
    requests = json.dumps(
        {"calls": [], "approvals": [{"tool_name": "delete_file", "args": {"path": "/tmp/x"}, "tool_call_id": "c1"}]}
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "select absurd.spawn_task(%s, 'ops', '{}'::jsonb) from generate_series(1, %s)", (INBOX_QUEUE, n)
        )
        tasks = sql.Identifier(f"t_{INBOX_QUEUE}")
        insert = sql.SQL(
            "insert into pydantic_ai_absurd.inbox_requests (token, queue_name, task_id, task_name, agent_name,"
            " wait_name, requests, scope, asked_at, answered_at)"
            " select %s || t.task_id, %s, t.task_id, 'ops', 'ops', 'approve', %s::jsonb,"
            " 'tenant-' || (row_number() over () %% 100), now() - interval '1 day' + row_number() over () * interval '1 ms',"
            " {} from absurd.{} t"
        )
        await conn.execute(insert.format(sql.SQL("null"), tasks), ("pydantic-ai-absurd:", INBOX_QUEUE, requests))
        await conn.execute(insert.format(sql.SQL("now()"), tasks), ("answered:", INBOX_QUEUE, requests))
        await conn.execute("analyze pydantic_ai_absurd.inbox_requests")
        cur = await conn.execute(
            "select token, task_id::text from pydantic_ai_absurd.inbox_requests where answered_at is null"
            " order by asked_at desc limit %s",
            (reps,),
        )
        sample = [(str(row[0]), str(row[1])) for row in await cur.fetchall()]
    absurd = AsyncAbsurd(dsn, queue_name=INBOX_QUEUE)
    inbox = Inbox(absurd)

    async def timed(make: Callable[[int], Any], count: int) -> tuple[list[float], Any]:
        values: list[float] = []
        result: Any = None
        for i in range(count):
            start = time.perf_counter()
            result = await make(i)
            values.append(time.perf_counter() - start)
        return values, result

    try:
        await inbox.pending(limit=1)  # warm up
        page, page_result = await timed(lambda i: inbox.pending(limit=100), reps)
        scoped, scoped_result = await timed(lambda i: inbox.pending(scope=f"tenant-{i % 100}"), reps)
        by_task, _ = await timed(lambda i: inbox.pending(task_id=sample[i][1]), reps)
        got, _ = await timed(lambda i: inbox.get(sample[i][0]), reps)
        everything, all_result = await timed(lambda i: inbox.pending(), max(reps // 4, 2))
        approved, _ = await timed(lambda i: inbox.approve(sample[i][0], answered_by="bench"), reps)
    finally:
        await absurd.close()
    assert len(page_result) == 100 and len(all_result) == n - len(sample) + len(sample)
    return {
        "n": n,
        "page": summary(page),
        "scope": summary(scoped),
        "scope_rows": len(scoped_result),
        "task": summary(by_task),
        "get": summary(got),
        "all": summary(everything),
        "approve": summary(approved),
    }


def render_inbox(r: dict[str, Any]) -> str:
    """The inbox section of docs/benchmarks.md."""

    def met(s: dict[str, float]) -> str:
        return "met" if s["median"] < 0.050 else "**missed**"

    rows = [
        ("`pending(limit=100)`, oldest first", r["page"], "100 rows returned", met(r["page"])),
        ("`pending(scope=...)`", r["scope"], f"{r['scope_rows']} rows of one of 100 scopes", met(r["scope"])),
        ("`pending(task_id=...)`", r["task"], "1 row", met(r["task"])),
        ("`get(token)`", r["get"], "1 row", met(r["get"])),
        ("`approve(token)`", r["approve"], "lock, validate, mark answered, emit the event: one transaction", ""),
        ("`pending()`, every request", r["all"], f"{r['n']} rows, each parsed into a `PendingRequest`", ""),
    ]
    table = ["| call | median (p10 - p90) | notes | target < 50 ms |", "|---|---|---|---|"]
    table += [f"| {a} | {ms(b)} ms | {c} | {d} |" for a, b, c, d in rows]
    return f"""## Inbox

`Inbox` calls with {r["n"]:,} waiting requests (each of its own live task) and {r["n"]:,} answered ones in
the table, in one event loop, as a web app calls it: the calls reuse the inbox's idle connection
(`borrow_connection`); the query joins Absurd's
task table of each queue that has open requests and reads the partial index on open rows
(`inbox_requests_open`, `inbox_requests_open_scope`).

{chr(10).join(table)}

"""


# -- inspect: a task with 1,000 steps, and the task listing ------------------------------------------------------

INSPECT_QUEUE = "bench_inspect"


async def bench_inspect(dsn: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`inspect_task` on a task of 1,001 steps (crashed half way, resumed) and `list_tasks` over 10,000 tasks."""
    from pydantic_ai_absurd.inspection import inspect_task, list_tasks
    from pydantic_ai_absurd.inspection._render import render_timeline

    turns = cfg["inspect_turns"]
    reps = cfg["inspect_reps"]
    await setup(dsn, queues=[INSPECT_QUEUE])
    calls = [0]

    def crash_once() -> None:  # the first attempt fails half way; the second replays the first half
        calls[0] += 1
        if calls[0] == turns // 2:
            raise RuntimeError("simulated crash half way")

    _, agent = scripted_agent(turns, name="inspected", on_tool=crash_once)
    absurd = AsyncAbsurd(dsn, queue_name=INSPECT_QUEUE)

    @absurd.register_task(name="long")
    async def long(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        return {"output": (await agent.run("go", usage_limits=NO_LIMITS)).output}

    async def timed(make: Callable[[], Any], count: int) -> tuple[list[float], Any]:
        values: list[float] = []
        result: Any = None
        for _ in range(count):
            start = time.perf_counter()
            result = await make()
            values.append(time.perf_counter() - start)
        return values, result

    try:
        spawned = await absurd.spawn("long", {})
        task_id = str(spawned["task_id"])
        await drain(absurd, task_id)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "select absurd.spawn_task(%s, 'other', '{}'::jsonb) from generate_series(1, %s)",
                (INSPECT_QUEUE, cfg["inspect_tasks"]),
            )
            await conn.execute(sql.SQL("analyze absurd.{}").format(sql.Identifier(f"t_{INSPECT_QUEUE}")))
            await inspect_task(conn, task_id, queue=INSPECT_QUEUE)  # warm up
            query, timeline = await timed(lambda: inspect_task(conn, task_id, queue=INSPECT_QUEUE), reps)
            listing, rows = await timed(lambda: list_tasks(conn, queue=INSPECT_QUEUE, limit=50), reps)
        connected, _ = await timed(lambda: inspect_task(dsn, task_id, queue=INSPECT_QUEUE), reps)
        rendered, _ = await timed(lambda: _async(render_timeline, timeline), reps)
    finally:
        await absurd.close()
    assert len(rows) == 50 and timeline.totals.steps == 2 * turns + 1
    return {
        "steps": timeline.totals.steps,
        "replayed": timeline.totals.steps_replayed,
        "attempts": len(timeline.attempts),
        "tasks": cfg["inspect_tasks"] + 1,
        "query": summary(query),
        "connected": summary(connected),
        "render": summary(rendered),
        "listing": summary(listing),
    }


async def _async(function: Callable[[Any], Any], value: Any) -> Any:
    return function(value)


def render_inspect(r: dict[str, Any]) -> str:
    """The inspect section of docs/benchmarks.md."""

    def met(s: dict[str, float]) -> str:
        return "met" if s["median"] < 0.200 else "**missed**"

    rows = [
        (
            f"`inspect_task` on an open connection, {r['steps']:,} steps",
            r["query"],
            f"{r['attempts']} attempts, {r['replayed']} steps replayed; 3 queries + decoding every step",
            met(r["query"]),
        ),
        (
            "`inspect_task(dsn, ...)` (connects first)",
            r["connected"],
            "what `pydantic-ai-absurd inspect` does",
            met(r["connected"]),
        ),
        ("human report of that timeline", r["render"], "`render_timeline`", ""),
        (
            f"`list_tasks(limit=50)` of {r['tasks']:,} tasks",
            r["listing"],
            "newest first, with each task's last step",
            "",
        ),
    ]
    table = ["| call | median (p10 - p90) | notes | target < 200 ms |", "|---|---|---|---|"]
    table += [f"| {a} | {ms(b)} ms | {c} | {d} |" for a, b, c, d in rows]
    return f"""## Inspect

A durable run of {r["steps"]:,} steps (model request + tool call per turn) that failed half way and was
resumed by a second attempt, read back with `inspect_task`: the task and run rows, every checkpoint
(`absurd.get_task_checkpoint_states`), each model response decoded through Pydantic AI's message adapter.

{chr(10).join(table)}

"""


# -- report -----------------------------------------------------------------------------------------------------


def machine_info(dsn: str) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select version()").fetchone()
        pg = str(row[0]).split(" on ")[0] if row else "?"
        row = conn.execute("select current_setting('synchronous_commit'), current_setting('fsync')").fetchone()
        durability = f"synchronous_commit={row[0]}, fsync={row[1]}" if row else "?"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"load average at start {os.getloadavg()[0]:.2f} (other processes share the machine: compare runs)",
        "python": platform.python_version(),
        "postgres": f"{pg} (local, TCP; {durability})",
        "versions": ", ".join(
            f"{p} {version(p)}" for p in ("pydantic-ai-absurd", "pydantic-ai-slim", "absurd-sdk", "psycopg")
        )
        + f" (commit {commit})",
    }


def ms(s: dict[str, float], scale: float = 1000.0, digits: int = 2) -> str:
    return f"{s['median'] * scale:.{digits}f} ({s['p10'] * scale:.{digits}f} - {s['p90'] * scale:.{digits}f})"


def statements_text(counts: dict[str, int], steps: int) -> str:
    total = sum(counts.values())
    detail = ", ".join(f"`{k}` x {v}" for k, v in sorted(counts.items()))
    return f"{total / steps:.2f} per step ({total} for {steps} steps: {detail or 'none'})"


def render(r: dict[str, Any], info: dict[str, str], cfg: dict[str, Any], wall: float) -> str:
    steps = r["steps"]
    per_step = r["per_step"]["median"]
    insert = r["insert"]["median"]
    ratio = per_step / insert
    long = r["long"]
    replay_ratio = long["replay"]["median"] / long["plain"]["median"]
    crash = r["crash"]
    new_per_step = sum(r["sql_new"].values()) / steps
    replay_per_step = sum(r["sql_replay"].values()) / steps

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    digest = r["digest"]
    digest_per_step = digest["per_run"]["median"] / digest["steps"]
    digest_share = digest_per_step / per_step
    rows = [
        (
            "1. plain `agent.run` (outside a task)",
            f"{ms(r['plain'])} ms",
            f"{r['turns']} tool turns, {steps} steps",
            "",
        ),
        ("2. durable run (handler time)", f"{ms(r['durable'])} ms", f"{steps} new steps", ""),
        (
            "2. replay digest per step (`asked_for`, model + tool steps)",
            f"{digest_per_step * 1e6:.1f} µs",
            f"{digest_share:.1%} of the per-step overhead; target < 5%",
            verdict(digest_share < 0.05),
        ),
        (
            "2. overhead per step = (durable - plain) / steps",
            f"{per_step * 1000:.3f} ms",
            f"p10 - p90 over durable runs: {r['per_step']['p10'] * 1000:.3f} - {r['per_step']['p90'] * 1000:.3f} ms",
            "",
        ),
        (
            "2. time in SQL statements per step (inside the durable run)",
            f"{ms(r['sql_per_step'], digits=3)} ms",
            "sum of statement times per run / steps; noisy when the machine is loaded",
            "",
        ),
        ("3. raw INSERT + COMMIT (psycopg async, autocommit)", f"{ms(r['insert'], digits=3)} ms", "physical floor", ""),
        ("3. `SELECT 1` round trip (for reference)", f"{ms(r['select1'], digits=3)} ms", "", ""),
        ("3. overhead per step ÷ INSERT+COMMIT", f"{ratio:.1f}x", "target ≤ 6x", verdict(ratio <= 6)),
        ("4. SQL statements per new step", f"{new_per_step:.2f}", "target 1", verdict(new_per_step <= 1.0)),
        ("4. SQL statements per replayed step", f"{replay_per_step:.2f}", "target 0", verdict(replay_per_step == 0)),
    ]
    for n, s in r["throughput"].items():
        rows.append(
            (
                f"5. throughput, {n} worker process{'es' if n > 1 else ''} x concurrency 4",
                f"{s['median']:.0f} tasks/s ({s['p10']:.0f} - {s['p90']:.0f})",
                f"{cfg['tasks']} tasks of 3 steps, {s['n']} trial(s)",
                "",
            )
        )
    rows += [
        (f"6. plain run, {long['steps']}-step agent", f"{ms(long['plain'], digits=0)} ms", "", ""),
        (f"6. first durable run, {long['steps']} steps", f"{ms(long['first'], digits=0)} ms", "", ""),
        (
            f"6. replay of all {long['steps']} steps",
            f"{ms(long['replay'], digits=0)} ms",
            f"{replay_ratio:.2f}x plain; target ≤ 1.1x",
            verdict(replay_ratio <= 1.1),
        ),
        (
            "7. SIGKILL → task completed on another worker",
            f"{crash['to_done']['median']:.2f} s ({crash['to_done']['p10']:.2f} - {crash['to_done']['p90']:.2f})",
            f"fast takeover, defaults (claim_timeout=10 s, poll 0.5 s), {crash['to_done']['n']} trials, "
            f"max {crash['max_done']:.2f} s; includes ~1.5 s of remaining tool work",
            "",
        ),
    ]
    if crash["to_claim"]:
        c = crash["to_claim"]
        rows.append(
            (
                "7. SIGKILL → handler resumed on another worker",
                f"{c['median']:.2f} s ({c['p10']:.2f} - {c['p90']:.2f})",
                f"max {crash['max_claim']:.2f} s; target p50 ≤ 2 s without waiting for the lease",
                verdict(c["median"] <= 2),
            )
        )
    table = ["| measure | median (p10 - p90) | notes | target |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]

    inbox_section = render_inbox(r["inbox"]) if "inbox" in r else ""
    inbox_section += render_inspect(r["inspect"]) if "inspect" in r else ""
    return f"""# Benchmarks

What durability costs on a local PostgreSQL, measured by `benchmarks/bench.py` with scripted models
(no network, no LLM). Every number is a median with its p10 - p90 spread in parentheses.

## Setup

- Date: {info["date"]}
- Machine: {info["machine"]}
- Python {info["python"]}; PostgreSQL: {info["postgres"]}
- Versions: {info["versions"]}
- Run: `python benchmarks/bench.py{" --quick" if cfg["quick"] else ""}`
  (wall time {wall:.0f} s)

The scripted agent calls one tool per model turn: {r["turns"]} turns plus a final answer make {steps}
durable steps ({r["turns"] + 1} model requests + {r["turns"]} tool calls). Durable runs execute inside an
Absurd task claimed in-process (`AsyncAbsurd.work_batch`); their time is measured inside the handler, around
`agent.run`. Plain and durable runs are interleaved in {cfg["blocks"]} blocks of {cfg["reps"]} runs each.

## Results

{chr(10).join(table)}

SQL statements per step were counted on `psycopg.AsyncCursor.execute` while `agent.run` ran (the claim, the
checkpoint preload at task start and the completion of the run are outside that window):

- new steps: {statements_text(r["sql_new"], steps)}
- replayed steps: {statements_text(r["sql_replay"], steps)}
- replay of the {long["steps"]}-step run: {statements_text(long["sql_replay"], long["steps"])}

Time per statement during the durable runs of item 2 (client side, median (p10 - p90)):

{chr(10).join(f"- `{k}`: {ms(v, digits=3)} ms ({v['n']} calls)" for k, v in sorted(r["sql_by_statement"].items()))}
{inbox_section}## What the numbers mean

- **Per-step overhead** is the extra time a step costs inside a task: checkpoint encoding, the SQL round
  trips of `begin_step` / `complete_step` (each `set_task_checkpoint_state` is a PL/pgSQL function that
  reads the run, extends the claim and upserts the checkpoint, all in one transaction, so it costs more than
  a bare single-row insert), and the engine's bookkeeping.
- **One statement per new step.** The SDK preloads every checkpoint of the task when a run starts, so
  the engine answers `begin_step` from that cache (`_absurd.begin_step`) and a new step costs only its
  `set_task_checkpoint_state` write. Replayed steps are served from the same cache: zero statements.
- **Throughput** covers spawn, claim, three steps, completion, with workers already running
  (`run_worker`, concurrency 4 each, `poll_interval=0.1`) and {cfg["tasks"]} tasks spawned one by one from
  the benchmark process. On a 2-core machine Postgres and the workers share the CPUs, so more processes
  mostly compete for them.
- **Crash recovery** uses `run_worker` defaults (`claim_timeout=10`, poll every 0.5 s), two workers, and
  a task of 4 tool calls of 0.5 s each; the worker that claimed it is SIGKILLed 0.75 s into its tool
  calls. Its backends end with the process, so its liveness lock is released at once; the other
  worker's next takeover check (every poll interval) finds the run claimed by a worker that holds no
  lock, hands it back with `absurd.schedule_run` (no attempt used), claims it, replays the finished steps
  and runs the rest (~1.5 s of tool work, the interrupted call included). The lease (10 s) is not waited
  for; it stays the fallback for lost machines and poolers (see Running in production).

## Reproduce

```bash
pip install -e .           # in a checkout, with PostgreSQL reachable
python benchmarks/bench.py --dsn postgresql://postgres@127.0.0.1:5432/postgres   # full run, < 4 min
python benchmarks/bench.py --quick                                               # < 40 s, fewer repetitions
```

The benchmark creates a scratch database with a random name on that server, installs Absurd's schema there,
and drops it at the end. Add `--no-docs` to print the table without rewriting this page.
"""


# -- main -------------------------------------------------------------------------------------------------------


async def inbox_only(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    async with scratch_database(args.dsn) as dsn:
        print(render_inbox(await bench_inbox(dsn, cfg)))


async def inspect_only(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    async with scratch_database(args.dsn) as dsn:
        print(render_inspect(await bench_inspect(dsn, cfg)))


async def main_async(args: argparse.Namespace) -> None:
    quick = args.quick
    cfg: dict[str, Any] = {
        "quick": quick,
        "turns": 10,
        "reps": 5 if quick else 15,
        "blocks": 2 if quick else 4,
        "inserts": 200 if quick else 1000,
        "long_turns": 250,
        "long_reps": 1 if quick else 3,
        "tasks": 60 if quick else 200,
        "throughput_trials": 1 if quick else 3,
        "crash_trials": 5,
        "inbox_requests": 10_000,
        "inbox_reps": 10 if quick else 40,
        "inspect_turns": 500,
        "inspect_reps": 5 if quick else 20,
        "inspect_tasks": 10_000,
    }
    if args.inbox_only:
        await inbox_only(args, cfg)
        return
    if args.inspect_only:
        await inspect_only(args, cfg)
        return
    started = time.perf_counter()
    counter = StatementCounter()
    counter.install()
    async with scratch_database(args.dsn) as dsn:
        await setup(dsn, queues=[QUEUE])
        info = machine_info(dsn)
        dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        print(f"benchmarking on database {dbname} ({'quick' if quick else 'full'} run)", flush=True)
        results = await bench_in_process(dsn, cfg, counter)
        results["digest"] = bench_digest(cfg["turns"], 200 if quick else 1000)
        print("in-process items done", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            results["throughput"] = await bench_throughput(dsn, cfg, Path(tmp))
            print("throughput done", flush=True)
            results["crash"] = await bench_crash_recovery(dsn, cfg, Path(tmp))
        results["events"] = await bench_events(dsn, quick)
        print("events done", flush=True)
        results["inbox"] = await bench_inbox(dsn, cfg)
        print("inbox done", flush=True)
        results["inspect"] = await bench_inspect(dsn, cfg)
        print("inspect done", flush=True)
        results["conversations"] = await bench_conversations(dsn, quick)
        print("conversations done", flush=True)
        results["transactions"] = await bench_transactions(dsn, quick)
        print("transactions done", flush=True)
    wall = time.perf_counter() - started
    page = with_events_section(render(results, info, cfg, wall), render_events(results["events"]))
    page = with_conversations_section(page, render_conversations(results["conversations"]))
    page = with_transactions_section(page, render_transactions(results["transactions"]))
    docs = ROOT / "docs" / "benchmarks.md"
    previous = docs.read_text() if docs.exists() else ""
    for start, end in (
        (SCALE_START, SCALE_END),
        (CHILDREN_START, CHILDREN_END),
    ):  # measured by their own scripts: kept as they are
        kept = marked_section(previous, start, end)
        if kept is not None:
            page = replace_section(page, kept, start, end)
    table_start = page.index("## Results")
    print(page[table_start : page.index("## What the numbers mean")])
    print(f"wall time: {wall:.1f} s")
    if not args.no_docs:
        (ROOT / "docs" / "benchmarks.md").write_text(page)
        print("wrote docs/benchmarks.md")


@contextmanager
def _workers_dsn(dsn: str, pgbouncer: bool) -> Iterator[str]:
    """`dsn`, or with `--pgbouncer` the DSN of a PgBouncer (transaction pooling) started in front of it."""
    if not pgbouncer:
        yield dsn
        return
    sys.path.insert(0, str(ROOT))
    from tests.helpers.pgbouncer import running_pgbouncer

    with running_pgbouncer(dsn) as pooled:
        yield pooled


async def main_takeover(args: argparse.Namespace) -> None:
    """Run only item 7 (SIGKILL -> resumed / completed elsewhere) in a scratch database and print it."""
    async with scratch_database(args.dsn) as dsn:
        await setup(dsn, queues=[QUEUE])
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp, _workers_dsn(dsn, args.pgbouncer) as worker_dsn:
            crash = await bench_crash_recovery(dsn, {"crash_trials": 5}, Path(tmp), worker_dsn=worker_dsn)
    print(json.dumps(crash, indent=2))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    if "--scale-only" in sys.argv:  # issue 19's scale benchmarks live in bench_scale.py
        import bench_scale

        sys.argv.remove("--scale-only")
        bench_scale.main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN), help="server to benchmark on")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 40 s)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--inbox-only", action="store_true", help="run only the inbox section and print it")
    parser.add_argument("--inspect-only", action="store_true", help="run only the inspect section and print it")
    parser.add_argument("--takeover-only", action="store_true", help="run only item 7 (SIGKILL takeover), print it")
    parser.add_argument(
        "--pgbouncer", action="store_true", help="with --takeover-only: workers connect through PgBouncer (transaction)"
    )
    args = parser.parse_args()
    if args.takeover_only:
        asyncio.run(main_takeover(args))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
