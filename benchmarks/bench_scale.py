"""Scale benchmarks (issue 19): many concurrent agent runs per worker, connections, statements, per-step cost.

Usage:
    python benchmarks/bench_scale.py [--dsn ...] [--quick] [--src DIR] [--json OUT]
    python benchmarks/bench.py --scale-only [...]     (the same)

Each scenario runs in its own Python process on a scratch database (created and dropped here):

1. 200 concurrent runs of W(3) (4 model calls of 2 s each via `FunctionModel` + `asyncio.sleep`, 3 tool calls):
   plain `agent.run()` in one process, our worker (`concurrency=200`, `pool_size=10`) and Absurd's own
   `start_worker(concurrency=200)`; wall time, process CPU, and the most connections `pg_stat_activity` showed
   for that worker's `application_name` (sampled every 50 ms).
2. Statements per second of an idle-waiting worker with 200 runs in flight (each waits in its first model call),
   counted in the worker process (every `AsyncCursor.execute`) over a 10 s window, by statement.
3. Tasks/s of W(3) at 0 ms model, one run in flight, 300 tasks: our worker vs `start_worker`.
4. Overhead per checkpointed step, W(1) / W(10) / W(50) at 0 ms model, one run in flight: the median
   `agent.run` time inside the task minus the median plain run, divided by the steps (2k + 1). Against
   pydantic-ai-absurd 0.8 and DBOS, in interleaved rounds with CPU per step: `bench_perstep.py`.

`--src DIR` runs the scenarios against another source tree of the package (e.g. an export of an older commit)
for a before/after comparison in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from pydantic_ai.usage import UsageLimits

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
QUEUE = "scale"
APP = "pydantic-ai-absurd worker bench"
SDK_APP = "absurd-sdk start_worker bench"
DBOS_APP = "dbos bench"
NO_LIMITS = UsageLimits(request_limit=None)


def w_agent(
    turns: int,
    model_seconds: float,
    name: str,
    wait: asyncio.Event | None = None,
    capabilities: list[Any] | None = None,
) -> Any:
    """W(turns): `turns` tool calls, `turns + 1` model calls of `model_seconds` each (an `asyncio.sleep`)."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        if wait is not None:
            await wait.wait()
        if model_seconds:
            await asyncio.sleep(model_seconds)
        if turn < turns:
            return ModelResponse(parts=[ToolCallPart("work", {"i": turn}, tool_call_id=f"call-{turn}")])
        return ModelResponse(parts=[TextPart(f"done after {turn} tool calls")])

    extra: dict[str, Any] = {"capabilities": capabilities} if capabilities else {}
    agent = Agent(FunctionModel(respond, model_name="scripted"), name=name, **extra)

    @agent.tool_plain
    async def work(i: int) -> str:
        return f"result {i}"

    return agent


# -- child process scenarios ---------------------------------------------------------------------------------------


async def _count(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...]) -> int:
    cur = await conn.execute(query, params)  # pyright: ignore[reportArgumentType]
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _watch(dsn: str, app: str, n: int, peak: list[int]) -> None:
    """Sample the connections of `app` every 50 ms until `n` tasks completed."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name="bench monitor") as conn:
        while True:
            peak[0] = max(
                peak[0], await _count(conn, "select count(*) from pg_stat_activity where application_name = %s", (app,))
            )
            done = await _count(
                conn, f"select count(*) from absurd.t_{QUEUE} where state in ('completed', 'failed')", ()
            )
            if done >= n:
                return
            await asyncio.sleep(0.05)


async def _sample(dsn: str, peak: list[int]) -> None:
    """Sample every 50 ms, until cancelled, the connections to the scratch database but the monitor's own."""
    query = "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name="bench monitor") as conn:
        while True:
            peak[0] = max(peak[0], await _count(conn, query, ()))
            await asyncio.sleep(0.05)


def dbos_url(dsn: str) -> str:
    """`dsn` as the URL DBOS takes, with the DBOS application name."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(info.get("host", "127.0.0.1"))
    where = f"?host={host}&" if host.startswith("/") else "?"
    return (
        f"postgresql://{info.get('user', 'postgres')}@{'' if host.startswith('/') else host}:{info.get('port', 5432)}"
        f"/{info['dbname']}{where}application_name={DBOS_APP.replace(' ', '%20')}"
    )


async def child_dbos(cfg: dict[str, Any]) -> dict[str, Any]:
    """Pydantic AI's DBOS integration: one workflow per run, all started at once in one process."""
    from dbos import DBOS
    from pydantic_ai.durable_exec.dbos import DBOSAgent

    url = dbos_url(cfg["dsn"])
    agent = DBOSAgent(w_agent(cfg["turns"], cfg["model"], "w"), name="w")
    DBOS(config={"name": "bench", "system_database_url": url, "run_admin_server": False})  # type: ignore[typeddict-unknown-key]

    @DBOS.workflow()
    async def run_one() -> str:
        return (await agent.run("go", usage_limits=NO_LIMITS)).output

    DBOS.launch()
    peak = [0]
    sampler = asyncio.ensure_future(_sample(cfg["dsn"], peak))
    start, cpu = time.perf_counter(), time.process_time()
    handles = [await DBOS.start_workflow_async(run_one) for _ in range(cfg["n"])]
    await asyncio.gather(*(handle.get_result() for handle in handles))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    sampler.cancel()
    DBOS.destroy()
    return {"wall": wall, "cpu": cpu, "connections": peak[0]}


async def child_plain(cfg: dict[str, Any]) -> dict[str, Any]:
    agent = w_agent(cfg["turns"], cfg["model"], "plain")
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(agent.run("go", usage_limits=NO_LIMITS) for _ in range(cfg["n"])))
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "connections": 0}


async def _spawn_all(dsn: str, task: str, n: int) -> None:
    from absurd_sdk import AsyncAbsurd

    client = AsyncAbsurd(dsn, queue_name=QUEUE)
    for _ in range(n):
        await client.spawn(task, {}, max_attempts=1, queue=QUEUE)
    await client.close()


def _durable_client(dsn: str, cfg: dict[str, Any], timings: list[float], cpu_times: list[float] | None = None) -> Any:
    from absurd_sdk import AsyncAbsurd, AsyncTaskContext

    from pydantic_ai_absurd import AbsurdAgent

    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    agent = AbsurdAgent(w_agent(cfg["turns"], cfg["model"], "w"))
    cpu_times = [] if cpu_times is None else cpu_times

    @absurd.register_task(name="w")
    async def w(params: Any, ctx: AsyncTaskContext) -> dict[str, Any]:
        start, cpu = time.perf_counter(), time.process_time()
        result = await agent.run("go", usage_limits=NO_LIMITS)
        timings.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        return {"output": result.output}

    return absurd


async def child_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    from pydantic_ai_absurd.worker import Worker, WorkerConfig

    dsn, timings, cpu_times, peak = cfg["dsn"], [], [], [0]
    absurd = _durable_client(dsn, cfg, timings, cpu_times)
    await _spawn_all(dsn, "w", cfg["n"])
    options: dict[str, Any] = {"concurrency": cfg["concurrency"], "worker_id": "bench", "handle_signals": False}
    options["poll_interval"] = cfg.get("poll_interval", 0.05)
    if "pool_size" in {f.name for f in fields(WorkerConfig)}:
        options["pool_size"] = cfg["pool_size"]
    worker = Worker(absurd, WorkerConfig(**options))
    profile = _profiler(cfg)
    start, cpu = time.perf_counter(), time.process_time()
    job = asyncio.ensure_future(worker.run())
    await _watch(dsn, APP, cfg["n"], peak)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    worker.request_stop()
    await job
    await absurd.close()
    result = {"wall": wall, "cpu": cpu, "connections": peak[0], "run_median": _median(timings)}
    return {**result, "run_cpu": _median(cpu_times[5:] or cpu_times), **_profile(profile)}


async def child_sdk(cfg: dict[str, Any]) -> dict[str, Any]:
    dsn = psycopg.conninfo.make_conninfo(cfg["dsn"], application_name=SDK_APP)
    timings: list[float] = []
    peak = [0]
    absurd = _durable_client(dsn, cfg, timings)
    await _spawn_all(dsn, "w", cfg["n"])
    start, cpu = time.perf_counter(), time.process_time()
    job = asyncio.ensure_future(
        absurd.start_worker(concurrency=cfg["concurrency"], claim_timeout=30, poll_interval=0.05)
    )
    await _watch(cfg["dsn"], SDK_APP, cfg["n"], peak)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    await absurd.close()
    return {"wall": wall, "cpu": cpu, "connections": peak[0], "run_median": _median(timings)}


async def child_idle(cfg: dict[str, Any]) -> dict[str, Any]:
    """200 runs in flight, each waiting in its first model call; count the worker's statements for 10 s."""
    from absurd_sdk import AsyncAbsurd, AsyncTaskContext
    from psycopg import AsyncCursor

    from pydantic_ai_absurd import AbsurdAgent
    from pydantic_ai_absurd.worker import Worker, WorkerConfig

    dsn, n = cfg["dsn"], cfg["n"]
    release = asyncio.Event()
    started: list[int] = []
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    agent = AbsurdAgent(w_agent(1, 0.0, "idle", wait=release))

    @absurd.register_task(name="idle")
    async def idle(params: Any, ctx: AsyncTaskContext) -> None:
        started.append(1)
        await agent.run("go", usage_limits=NO_LIMITS)

    await _spawn_all(dsn, "idle", n)
    counts: Counter[str] = Counter()
    counting = [False]
    original = AsyncCursor.execute

    async def counted(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if counting[0]:
            text = query.as_string(self) if hasattr(query, "as_string") else str(query)
            counts[" ".join(text.split()[:2])[:48]] += 1
        return await original(self, query, params, **kwargs)

    AsyncCursor.execute = counted  # type: ignore[method-assign]
    options: dict[str, Any] = {"concurrency": n, "worker_id": "bench", "handle_signals": False}
    worker = Worker(absurd, WorkerConfig(**options))
    job = asyncio.ensure_future(worker.run())
    while len(started) < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the first steps of the last runs are written
    counting[0] = True
    await asyncio.sleep(cfg["window"])
    counting[0] = False
    worker.request_stop()
    release.set()
    await job
    await absurd.close()
    return {"per_second": sum(counts.values()) / cfg["window"], "by_statement": dict(counts), "window": cfg["window"]}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _profiler(cfg: dict[str, Any]) -> Any:
    if not cfg.get("profile"):
        return None
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    return profile


def _profile(profile: Any) -> dict[str, Any]:
    if profile is None:
        return {}
    import io
    import pstats

    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"pydantic_ai_absurd|absurd_sdk|psycopg_pool", 30)
    return {"profile": out.getvalue()}


async def child_plain_steps(cfg: dict[str, Any]) -> dict[str, Any]:
    agent = w_agent(cfg["turns"], 0.0, "plain")
    times: list[float] = []
    cpu_times: list[float] = []
    for _ in range(cfg["n"]):
        start, cpu = time.perf_counter(), time.process_time()
        await agent.run("go", usage_limits=NO_LIMITS)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    return {"run_median": _median(times[5:] or times), "run_cpu": _median(cpu_times[5:] or cpu_times)}


CHILDREN = {
    "plain": child_plain,
    "ours": child_ours,
    "sdk": child_sdk,
    "idle": child_idle,
    "plain_steps": child_plain_steps,
    "dbos": child_dbos,
}


# -- parent ---------------------------------------------------------------------------------------------------------


async def in_fresh_database(
    admin_dsn: str, scenario: str, cfg: dict[str, Any], src: str | None, python: str | None = None
) -> dict[str, Any]:
    from bench_support import in_fresh_database as run_in_fresh

    return await run_in_fresh(__file__, admin_dsn, QUEUE, scenario, cfg, src, python)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    n = 200
    results: dict[str, Any] = {}
    w3 = {"n": n, "turns": 3, "model": 2.0, "concurrency": n, "pool_size": 10}
    results["plain"] = await in_fresh_database(args.dsn, "plain", w3, None)
    results["ours"] = await in_fresh_database(args.dsn, "ours", w3, args.src)
    results["sdk"] = await in_fresh_database(args.dsn, "sdk", w3, args.src)
    if args.dbos_python:
        results["dbos"] = await in_fresh_database(args.dsn, "dbos", w3, None, args.dbos_python)
    print("goal 1 done", flush=True)
    results["idle"] = await in_fresh_database(args.dsn, "idle", {"n": n, "window": 5.0 if quick else 10.0}, args.src)
    print("idle done", flush=True)
    tasks = 100 if quick else 300
    fast = {"n": tasks, "turns": 3, "model": 0.0, "concurrency": 1, "pool_size": 10}
    results["tps_ours"] = await in_fresh_database(args.dsn, "ours", fast, args.src)
    results["tps_sdk"] = await in_fresh_database(args.dsn, "sdk", fast, args.src)
    print("throughput done", flush=True)
    steps: dict[int, Any] = {}
    for turns in (1, 10, 50):
        reps = (60 if turns < 50 else 20) if quick else (200 if turns < 50 else 50)
        cfg = {"n": reps, "turns": turns, "model": 0.0, "concurrency": 1, "pool_size": 10}
        plain = await in_fresh_database(args.dsn, "plain_steps", cfg, None)
        ours = await in_fresh_database(args.dsn, "ours", {**cfg, "profile": turns == 50}, args.src)
        steps[turns] = {
            "plain": plain["run_median"],
            "ours": ours["run_median"],
            "per_step": (ours["run_median"] - plain["run_median"]) / (2 * turns + 1),
            "profile": ours.get("profile"),
        }
    results["steps"] = steps
    for key in ("tps_ours", "tps_sdk"):
        results[key]["tasks_per_second"] = tasks / results[key]["wall"]
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "| 200 runs of W(3), 2 s model calls, one process | wall | CPU | max connections |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("plain", "plain `agent.run()`"),
        ("ours", "our worker, concurrency=200, pool_size=10"),
        ("sdk", "Absurd `start_worker(concurrency=200)`"),
    ):
        r = results[key]
        lines.append(
            f"| {label} | {r['wall']:.1f} s | {r['cpu']:.1f} s | {r['connections'] if key != 'plain' else '-'} |"
        )
    idle = results["idle"]
    lines += [
        "",
        f"Idle-waiting worker, 200 runs in flight: {idle['per_second']:.1f} statements/s "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(idle['by_statement'].items()))} in {idle['window']:.0f} s).",
    ]
    lines += [
        "",
        f"W(3) at 0 ms, one in flight: our worker {results['tps_ours']['tasks_per_second']:.1f} tasks/s, "
        f"`start_worker` {results['tps_sdk']['tasks_per_second']:.1f} tasks/s.",
        "",
    ]
    lines += ["| per-step overhead, 0 ms model | plain run | durable run | per step |", "|---|---|---|---|"]
    for turns, r in results["steps"].items():
        lines.append(
            f"| W({turns}) | {r['plain'] * 1000:.1f} ms | {r['ours'] * 1000:.1f} ms | {r['per_step'] * 1000:.2f} ms |"
        )
    return "\n".join(lines)


START = "<!-- scale:start -->"
END = "<!-- scale:end -->"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def section_text(results: dict[str, Any], note: str) -> str:
    """The scale section of docs/benchmarks.md."""
    return f"{START}\n## Scale\n\n{note}\n\n{render(results)}\n{END}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cfg = json.loads(sys.argv[3])
        print(json.dumps(asyncio.run(CHILDREN[sys.argv[2]](cfg))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--src", help="source tree of pydantic_ai_absurd to benchmark (default: the installed one)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--dbos-python", help="a Python with `dbos` and pydantic-ai-slim[dbos] (a throwaway venv)")
    parser.add_argument("--only", help="run one scenario of goal 1 (plain, ours, sdk, dbos) and print it")
    args = parser.parse_args(sys.argv[1:])
    if args.only:
        w3 = {"n": 200, "turns": 3, "model": 2.0, "concurrency": 200, "pool_size": 10}
        python = args.dbos_python if args.only == "dbos" else None
        print(json.dumps(asyncio.run(in_fresh_database(args.dsn, args.only, w3, args.src, python))))
        return
    results = asyncio.run(run_all(args))
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
