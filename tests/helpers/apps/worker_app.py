"""A worker process for the worker tests: `python tests/helpers/apps/worker_app.py` (settings from the environment).

Task `steps`: `params["steps"]` checkpointed steps; each step body records `start` and `end` rows in
the `worker_effects` table around a sleep of `params["step_seconds"]`, so a test can count how often
each step body ran, across processes. With `params["gate"]` set to a step name (`"s1"`), that step's body
waits after its `start` row until the test opens the gate (`open_gate`), so a test decides when it ends.

Also loadable as a CLI target: `pydantic-ai-absurd worker tests.helpers.apps.worker_app:absurd`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd.worker import WorkerHealth, run_worker

DSN = os.environ.get("WORKER_DSN", "")
QUEUE = os.environ.get("WORKER_QUEUE", "default")

absurd = AsyncAbsurd(DSN or None, queue_name=QUEUE)

EFFECTS_TABLE = """create table if not exists worker_effects (
    queue text not null, task_id text not null, step text not null, event text not null,
    pid int not null, at timestamptz not null default clock_timestamp()
)"""


async def record(task_id: str, step: str, event: str) -> None:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(
            "insert into worker_effects (queue, task_id, step, event, pid) values (%s, %s, %s, %s, %s)",
            (QUEUE, task_id, step, event, os.getpid()),
        )


async def gate_opened(task_id: str, step: str) -> bool:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        cur = await conn.execute(
            "select 1 from worker_effects where queue = %s and task_id = %s and step = %s and event = 'open'",
            (QUEUE, str(task_id), step),
        )
        return await cur.fetchone() is not None


@absurd.register_task(name="steps")
async def steps(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
    for i in range(int(params["steps"])):

        async def body(i: int = i) -> int:
            await record(ctx.task_id, f"s{i}", "start")
            if params.get("gate") == f"s{i}":
                while not await gate_opened(str(ctx.task_id), f"s{i}"):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(float(params["step_seconds"]))
            await record(ctx.task_id, f"s{i}", "end")
            return i

        await ctx.step(f"s{i}", body)
    return {"steps": params["steps"], "pid": os.getpid()}


def write_health(path: str, health: WorkerHealth) -> None:
    """Write the worker's health as JSON to `path` (atomically: readers never see a partial file)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(health)))
    tmp.replace(path)


def dump_stacks() -> None:
    """On SIGUSR1: print every asyncio task's stack and every thread's (a test diagnosing a hung worker)."""
    print("=== asyncio tasks ===", flush=True)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stdout)
    sys.stdout.flush()
    faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
    print("=== end of stacks ===", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
    env = os.environ
    health_log = env.get("WORKER_HEALTH_LOG")
    options: dict[str, Any] = {"fast_takeover": env.get("WORKER_FAST_TAKEOVER", "1") == "1"}
    if health_log:

        def on_poll(health: WorkerHealth) -> None:
            write_health(health_log, health)

        options["on_poll"] = on_poll

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_stacks)
        try:
            await run_worker(
                absurd,
                concurrency=int(env.get("WORKER_CONCURRENCY", "4")),
                claim_timeout=int(env.get("WORKER_CLAIM_TIMEOUT", "15")),
                drain_timeout=float(env.get("WORKER_DRAIN_TIMEOUT", "25")),
                poll_interval=float(env.get("WORKER_POLL_INTERVAL", "0.1")),
                worker_id=env.get("WORKER_ID"),
                **options,
            )
        finally:
            await absurd.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
