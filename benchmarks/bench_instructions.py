"""User-space instructions per task of our worker and of Absurd's `start_worker`, counted by callgrind.

Usage:
    git -C . archive <commit> src | tar -x -C /tmp/src-before
    python benchmarks/bench_instructions.py --dsn DSN [--before /tmp/src-before/src] [--turns 3] [--tasks 40]

Wall and CPU times on a shared machine vary by ±15 % between rounds; instruction counts repeat to 0.1 %. Each
contender runs W(`--turns`) at 0 ms (or, with `--turns -1`, a handler that returns at once), one run in
flight, in its own process on a scratch database, under `valgrind --tool=callgrind --instr-atstart=no`:
instrumentation is switched on (`callgrind_control -i on`) when the handler of task `--warm` + 1 starts and
off when that of task `--warm` + `--tasks` + 1 starts, so exactly `--tasks` claim-run-complete cycles are
counted, the process's start and imports not. Timers would run about 50 times as often per task under
callgrind: the worker's takeover check is patched off and both poll every second (no poll happens while
tasks are waiting). Kernel time (system calls) is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale as bs

AFTER = str(Path(__file__).resolve().parent.parent / "src")


def _toggle(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True, capture_output=True
    )


async def child(kind: str, dsn: str, n: int, warm: int, turns: int) -> None:
    from absurd_sdk import AsyncAbsurd, AsyncTaskContext

    absurd = AsyncAbsurd(dsn, queue_name=bs.QUEUE)
    started, done = [0], asyncio.Event()
    agent = None
    if turns >= 0:
        from pydantic_ai_absurd import AbsurdAgent

        agent = AbsurdAgent(bs.w_agent(turns, 0.0, "w"))

    @absurd.register_task(name="w")
    async def w(params: Any, ctx: AsyncTaskContext) -> dict[str, Any]:
        started[0] += 1
        if started[0] in (warm + 1, warm + n + 1):
            _toggle(started[0] == warm + 1)
            if started[0] == warm + n + 1:
                done.set()
        if agent is None:
            return {"output": "x"}
        return {"output": (await agent.run("go", usage_limits=bs.NO_LIMITS)).output}

    await bs._spawn_all(dsn, "w", n + warm + 2)  # pyright: ignore[reportPrivateUsage]
    if kind == "ours":
        from pydantic_ai_absurd.worker import Worker, WorkerConfig, _loop  # pyright: ignore[reportPrivateUsage]

        _loop.TAKEOVER_CHECK_INTERVAL = 1e6  # pyright: ignore[reportPrivateUsage]
        config = WorkerConfig(concurrency=1, worker_id="bench", handle_signals=False, poll_interval=1.0, pool_size=10)
        worker = Worker(absurd, config)
        job = asyncio.ensure_future(worker.run())
        await done.wait()
        worker.request_stop()
        await job
    else:
        job = asyncio.ensure_future(absurd.start_worker(concurrency=1, claim_timeout=30, poll_interval=1.0))
        await done.wait()
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    await absurd.close()


async def count(admin_dsn: str, kind: str, src: str, n: int, warm: int, turns: int) -> float:
    """Instructions per task of one contender (`kind` "ours" or "sdk", package from `src`)."""
    from bench_support import scratch_database

    from pydantic_ai_absurd import setup

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        async with scratch_database(admin_dsn) as dsn:
            await setup(dsn, queues=[bs.QUEUE])
            env = {**os.environ, "PYTHONPATH": src}
            args = [sys.executable, __file__, "--child", kind, dsn, str(n), str(warm), str(turns)]
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *args]
            proc = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
        totals = re.search(r"^totals:\s+(\d+)", out.read_text(), re.M)
        assert totals is not None
        return int(totals.group(1)) / n


async def compare(args: argparse.Namespace) -> dict[str, list[float]]:
    contenders = [("after", "ours", AFTER), ("sdk", "sdk", AFTER)]
    if args.before:
        contenders.insert(1, ("before", "ours", args.before))
    results: dict[str, list[float]] = {label: [] for label, _, _ in contenders}
    for r in range(args.rounds):
        for label, kind, src in contenders if r % 2 == 0 else reversed(contenders):
            results[label].append(await count(args.dsn, kind, src, args.tasks, args.warm, args.turns))
        print(r, {label: f"{v[-1] / 1e6:.3f}M" for label, v in results.items()}, flush=True)
    for label, values in results.items():
        print(f"{label}: {min(values) / 1e6:.3f}M-{max(values) / 1e6:.3f}M instructions per task")
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, dsn, n, warm, turns = sys.argv[2:7]
        asyncio.run(child(kind, dsn, int(n), int(warm), int(turns)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", bs.DEFAULT_DSN))
    parser.add_argument("--before", help="the `src` directory of an older tree")
    parser.add_argument("--turns", type=int, default=3, help="W(turns); -1: a handler without an agent")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    results = asyncio.run(compare(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
