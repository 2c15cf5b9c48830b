"""Per-step overhead (issue 19, scenario 4 of `bench_scale.py`), against peers, in interleaved rounds.

Usage:
    python benchmarks/bench_perstep.py [--dsn ...] [--rounds 3] [--quick] [--src DIR] [--before-src DIR]
        [--peer08-python PY] [--dbos-python PY] [--json OUT] [--profile]

W(k) = k tool calls and k + 1 model calls at 0 ms (`FunctionModel`), one run in flight: 2k + 1 steps. The overhead
per step is the median durable `agent.run` time inside the task minus the median plain `agent.run` in the same
Python environment, divided by 2k + 1. Each contender runs in its own process on a scratch database; every round runs
every contender at W(1), W(10) and W(50) in turn, so a busy moment of the machine hits them all alike. Reported: the
median over rounds of each round's per-step overhead, and its range.

Contenders: this package's worker (`--src`, default the installed one), the same at `--before-src` (e.g. an export
of an older commit), the 0.8 release of the earlier pydantic-ai-absurd on Absurd's own `start_worker` (a Python with
`pydantic-ai-absurd==0.8.0`, `--peer08-python`), and Pydantic AI's DBOS integration (`--dbos-python`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import (
    DEFAULT_DSN,
    NO_LIMITS,
    QUEUE,
    child_ours,
    child_plain_steps,
    w_agent,
)

TURNS = (1, 10, 50)


async def child_peer08(cfg: dict[str, Any]) -> dict[str, Any]:
    """pydantic-ai-absurd 0.8 (its `AbsurdAgent` wrapper) on Absurd's `start_worker`, one run in flight.

    0.8's `AbsurdDurability` capability does not instantiate on pydantic-ai 2.51 (an abstract method it lacks);
    its deprecated `AbsurdAgent` wrapper checkpoints the same steps (each model request and tool call a `ctx.step`).
    """
    import warnings

    from absurd_sdk import AsyncAbsurd, AsyncTaskContext
    from bench_scale import _spawn_all, _watch  # pyright: ignore[reportPrivateUsage]

    from pydantic_ai_absurd import AbsurdAgent

    dsn, timings, cpu_times = cfg["dsn"], [], []
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        agent = AbsurdAgent(w_agent(cfg["turns"], 0.0, "w"), absurd)  # pyright: ignore[reportCallIssue]

    @absurd.register_task(name="w")
    async def w(params: Any, ctx: AsyncTaskContext) -> dict[str, Any]:
        start, cpu = time.perf_counter(), time.process_time()
        result = await agent.run("go", usage_limits=NO_LIMITS)
        timings.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        return {"output": result.output}

    await _spawn_all(dsn, "w", cfg["n"])
    job = asyncio.ensure_future(absurd.start_worker(concurrency=1, claim_timeout=30, poll_interval=0.05))
    await _watch(dsn, "none", cfg["n"], [0])
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    await absurd.close()
    return {"run_median": _settled_median(timings), "run_cpu": _settled_median(cpu_times)}


async def child_dbos_steps(cfg: dict[str, Any]) -> dict[str, Any]:
    """Pydantic AI's DBOS integration: one workflow per run, one at a time; `agent.run` timed inside it."""
    from bench_scale import dbos_url
    from dbos import DBOS
    from pydantic_ai.durable_exec.dbos import DBOSAgent

    timings: list[float] = []
    cpu_times: list[float] = []
    agent = DBOSAgent(w_agent(cfg["turns"], 0.0, "w"), name="w")
    DBOS(config={"name": "bench", "system_database_url": dbos_url(cfg["dsn"]), "run_admin_server": False})  # type: ignore[typeddict-unknown-key]

    @DBOS.workflow()
    async def run_one() -> str:
        start, cpu = time.perf_counter(), time.process_time()
        output = (await agent.run("go", usage_limits=NO_LIMITS)).output
        timings.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        return output

    DBOS.launch()
    for _ in range(cfg["n"]):
        await (await DBOS.start_workflow_async(run_one)).get_result()
    DBOS.destroy()
    return {"run_median": _settled_median(timings), "run_cpu": _settled_median(cpu_times)}


def _settled_median(values: list[float]) -> float:
    """The median without the first five runs (imports, caches, JIT-like warm-up of the pool)."""
    return statistics.median(values[5:] or values) if values else 0.0


CHILDREN = {
    "peer08": child_peer08,
    "dbos_steps": child_dbos_steps,
    "plain_steps": child_plain_steps,
    "ours": child_ours,
}


async def fresh(admin_dsn: str, scenario: str, cfg: dict[str, Any], src: str | None, python: str | None) -> Any:
    from bench_support import in_fresh_database

    return await in_fresh_database(__file__, admin_dsn, QUEUE, scenario, cfg, src, python)


Racer = tuple[str, str | None, str | None, dict[str, Any]]


def contenders(args: argparse.Namespace) -> dict[str, Racer]:
    """Label -> (durable scenario, source tree, Python, settings); each is compared with plain runs in its own Python."""
    found: dict[str, Racer] = {"ours": ("ours", args.src, None, {})}
    if args.slow_poll:  # the worker's takeover check runs every poll interval: at the default, 10 times less often
        found["ours, poll 0.5 s"] = ("ours", args.src, None, {"poll_interval": 0.5})
    if args.before_src:
        found["before"] = ("ours", args.before_src, None, {})
    if args.peer08_python:
        found["0.8"] = ("peer08", None, args.peer08_python, {})
    if args.dbos_python:
        found["dbos"] = ("dbos_steps", None, args.dbos_python, {})
    return found


async def per_step(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of every contender (and the plain runs of each Python) at W(1), W(10), W(50)."""
    rounds: list[dict[str, Any]] = []
    racers = contenders(args)
    pythons = sorted({python or "" for _, _, python, _ in racers.values()})
    loads: list[float] = []
    for number in range(args.rounds):
        measured: dict[str, Any] = {}
        for turns in TURNS:
            cfg = _config(args, turns)
            plain = {py: await fresh(args.dsn, "plain_steps", cfg, None, py or None) for py in pythons}
            for label, (scenario, src, python, settings) in racers.items():
                result = await fresh(args.dsn, scenario, {**cfg, **settings}, src, python)
                measured[f"{label} W({turns})"] = _overhead(plain[python or ""], result, turns)
        loads.append(os.getloadavg()[0])
        print(f"round {number + 1} done, load average {loads[-1]:.1f}", flush=True)
        rounds.append(measured)
    profiles = {}
    if args.profile:  # a pass of its own: the profiler slows what it measures
        for turns in (10, 50):
            cfg = {**_config(args, turns), "profile": True}
            profiles[turns] = (await fresh(args.dsn, "ours", cfg, args.src, None)).get("profile")
    return {"rounds": rounds, "labels": list(racers), "loads": loads, "profiles": profiles}


def _config(args: argparse.Namespace, turns: int) -> dict[str, Any]:
    reps = (60 if turns < 50 else 20) if args.quick else (200 if turns < 50 else 50)
    return {"n": reps, "turns": turns, "model": 0.0, "concurrency": 1, "pool_size": 10}


def _overhead(plain: dict[str, Any], durable: dict[str, Any], turns: int) -> dict[str, float]:
    steps = 2 * turns + 1
    return {
        "plain": plain["run_median"],
        "durable": durable["run_median"],
        "per_step": (durable["run_median"] - plain["run_median"]) / steps,
        "cpu_per_step": (durable.get("run_cpu", 0.0) - plain.get("run_cpu", 0.0)) / steps,
    }


def render(results: dict[str, Any]) -> str:
    """Per-step overhead: the median over rounds (range), its CPU part, and the plain and durable run medians."""
    rounds = results["rounds"]

    def median(label: str, turns: int, key: str) -> float:
        return statistics.median(r[f"{label} W({turns})"][key] * 1000 for r in rounds)

    head = "| per step, 0 ms model | " + " | ".join(f"W({k})" for k in TURNS) + " |"
    lines = [head, "|---" * 4 + "|"]
    for label in results["labels"]:
        cells = []
        for turns in TURNS:
            values = [r[f"{label} W({turns})"]["per_step"] * 1000 for r in rounds]
            cpu = median(label, turns, "cpu_per_step")
            cells.append(f"{statistics.median(values):.2f} ms ({min(values):.2f}-{max(values):.2f}), CPU {cpu:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| median run, ms | " + " | ".join(f"W({k}) plain / durable" for k in TURNS) + " |", "|---" * 4 + "|"]
    for label in results["labels"]:
        cells = [f"{median(label, k, 'plain'):.1f} / {median(label, k, 'durable'):.1f}" for k in TURNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(CHILDREN[sys.argv[2]](json.loads(sys.argv[3])))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--src", help="source tree of pydantic_ai_absurd to benchmark (default: the installed one)")
    parser.add_argument("--before-src", help="another source tree, measured as 'before' in the same rounds")
    parser.add_argument("--peer08-python", help="a Python with pydantic-ai-absurd==0.8.0 (a throwaway venv)")
    parser.add_argument("--dbos-python", help="a Python with `dbos` and pydantic-ai-slim[dbos] (a throwaway venv)")
    parser.add_argument("--slow-poll", action="store_true", help="also run ours at poll_interval=0.5 (the default)")
    parser.add_argument("--profile", action="store_true", help="then cProfile our worker at W(10) and W(50)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(sys.argv[1:])
    results = asyncio.run(per_step(args))
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
