"""A reader process: `python -m tests.helpers.apps.events_reader <dsn> <queue> <task id> <out file> [after]`.

Writes one JSON line per event of the task's log (`seq`, `kind`, `attempt`, `step`, `event`) as it arrives,
and exits after the run's finished event.
"""

from __future__ import annotations

import asyncio
import json
import sys

from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd import stream_events
from pydantic_ai_absurd.events._model import encode_event


async def read(dsn: str, queue: str, task_id: str, out: str, after: int) -> None:
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    try:
        with open(out, "a") as file:  # noqa: ASYNC230 - a test helper process
            async for item in stream_events(absurd, task_id, after=after):
                line = {"seq": item.seq, "kind": item.kind, "attempt": item.attempt, "step": item.step}
                line["event"] = encode_event(item.event)[1]
                file.write(json.dumps(line) + "\n")
                file.flush()
    finally:
        await absurd.close()


if __name__ == "__main__":
    asyncio.run(read(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0))
