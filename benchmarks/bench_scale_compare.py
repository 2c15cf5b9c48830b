"""Before/after rounds of two scale scenarios of `bench_scale.py`, interleaved, in one run.

Usage:
    git -C . archive <commit> src | tar -x -C /tmp/src-before
    python benchmarks/bench_scale_compare.py --dsn DSN --before /tmp/src-before/src [--rounds 6] [--idle-rounds 2]

Tasks/s and process CPU per task of W(3) at 0 ms, one run in flight (scenario 3), for this tree ("after"), the
`--before` tree and Absurd's `start_worker`, in `--rounds` rounds whose order is reversed every other round;
then the statements of an idle-waiting worker with 200 runs in flight (scenario 2), by statement, for both
trees. Prints each round, then medians and ranges; `--json` keeps the raw results. Each scenario runs in its
own process on a scratch database of `--dsn` (use an embedded server, not a shared one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale as bs

AFTER = str(Path(__file__).resolve().parent.parent / "src")


async def compare(args: argparse.Namespace) -> dict[str, Any]:
    labels = ("after", "before", "sdk")
    out: dict[str, Any] = {"tps": {k: [] for k in labels}, "cpu": {k: [] for k in labels}, "idle": {}, "load": []}
    fast = {"n": args.tasks, "turns": 3, "model": 0.0, "concurrency": 1, "pool_size": 10}
    for r in range(args.rounds):
        order = [("after", "ours", AFTER), ("before", "ours", args.before), ("sdk", "sdk", AFTER)]
        for label, scenario, src in order if r % 2 == 0 else reversed(order):
            res = await bs.in_fresh_database(args.dsn, scenario, fast, src)
            out["tps"][label].append(args.tasks / res["wall"])
            out["cpu"][label].append(res["cpu"] / args.tasks * 1000)
        out["load"].append(os.getloadavg()[0])
        print(r, {k: round(v[-1], 1) for k, v in out["tps"].items()}, "load", out["load"][-1], flush=True)
    for label, src in (("after", AFTER), ("before", args.before)):
        for _ in range(args.idle_rounds):
            res = await bs.in_fresh_database(args.dsn, "idle", {"n": 200, "window": 10.0}, src)
            out["idle"].setdefault(label, []).append(res)
            print("idle", label, res["per_second"], res["by_statement"], flush=True)
    for what, unit in (("tps", "tasks/s"), ("cpu", "ms CPU/task")):
        for label, values in out[what].items():
            if values:
                print(f"{label}: {statistics.median(values):.2f} {unit} ({min(values):.2f}-{max(values):.2f})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", bs.DEFAULT_DSN))
    parser.add_argument("--before", required=True, help="the `src` directory of the older tree")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--idle-rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    results = asyncio.run(compare(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
