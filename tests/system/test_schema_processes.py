"""Installing the schema from tasks and processes at once: one installs, all others find it up to date."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from pydantic_ai_absurd import setup
from tests.helpers.sql import queue_names


async def test_concurrent_setup_from_tasks_and_processes(empty_db: str) -> None:
    code = (
        "import sys; from pydantic_ai_absurd.schema import setup_sync; "
        "print(setup_sync(sys.argv[1], queues=['shared', sys.argv[2]]).action)"
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, empty_db, f"p{i}", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    infos = await asyncio.gather(*(setup(empty_db, queues=["shared", f"t{i}"]) for i in range(4)))
    outputs = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    actions = [info.action for info in infos] + [out.decode().strip() for out, _ in outputs]
    assert sorted(actions) == ["installed"] + ["up_to_date"] * 7
    assert await queue_names(empty_db) == {"shared"} | {f"t{i}" for i in range(4)} | {f"p{i}" for i in range(4)}
