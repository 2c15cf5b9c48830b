"""Helpers every benchmark script shares: statistics and a scratch database."""

from __future__ import annotations

import statistics

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import sql


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p10": quantile(values, 0.1),
        "p90": quantile(values, 0.9),
        "n": len(values),
    }


def scratch_dsn(admin_dsn: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # pyright: ignore[reportArgumentType]


async def admin(admin_dsn: str, statement: sql.Composable) -> None:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(statement)


async def drain(absurd: AsyncAbsurd, task_id: str) -> None:
    for _ in range(50):
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
            if snapshot.state != "completed":
                raise RuntimeError(f"task {task_id} ended {snapshot.state}: {snapshot.failure}")
            return
        await absurd.work_batch(claim_timeout=300, batch_size=1)
    raise RuntimeError(f"task {task_id} did not finish")
