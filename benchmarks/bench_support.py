"""Helpers every benchmark script shares: statistics, a scratch database and its section of the docs page."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
R = TypeVar("R")


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


@asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str = "bench") -> AsyncGenerator[str]:
    """The DSN of a new database `<prefix>_<random>` on `admin_dsn`'s server, dropped (forcibly) on exit."""
    dbname = f"{prefix}_{secrets.token_hex(4)}"
    await admin(admin_dsn, sql.SQL("create database {}").format(sql.Identifier(dbname)))
    try:
        yield scratch_dsn(admin_dsn, dbname)
    finally:
        await admin(admin_dsn, sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


def replace_section(page: str, section: str, start: str, end: str, *, before: str | None = None) -> str:
    """`page` with its part from `start` to `end` replaced by `section` (which holds both markers).

    A page without that part gets `section` before the line `before` when given and present, else at its end.
    One blank line separates the section from what follows it; the page ends with one newline.
    """
    if start in page and end in page:
        head, rest = page.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
    elif before is not None and before in page:
        head, tail = page.split(before, 1)
        tail = before + tail
    else:
        head, tail = page.rstrip("\n") + "\n\n", ""
    return head + section.strip("\n") + "\n" + ("\n" + tail if tail else "")


def marked_section(page: str, start: str, end: str) -> str | None:
    """The part of `page` from `start` to `end` (markers included), if it has one."""
    if start in page and end in page:
        return start + page.split(start, 1)[1].split(end, 1)[0] + end
    return None


def section_main(
    doc: str | None,
    prefix: str,
    measure: Callable[[str, bool], Awaitable[R]],
    render: Callable[[R], str],
    start: str,
    end: str,
    *,
    before: str | None = None,
) -> None:
    """The command line of a script that measures one section of docs/benchmarks.md.

    `--dsn` (the server), `--quick` (fewer repetitions), `--no-docs`: `measure(dsn, quick)` runs in a scratch
    database named after `prefix`, `render` turns its results into the section, printed and written into the page
    (`replace_section` with `start`, `end` and `before`) unless `--no-docs`.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", DEFAULT_DSN), help="server to benchmark on")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()

    async def run() -> R:
        async with scratch_database(args.dsn, prefix) as dsn:
            return await measure(dsn, args.quick)

    section = render(asyncio.run(run()))
    print(section)
    if not args.no_docs:
        DOCS_PAGE.write_text(replace_section(DOCS_PAGE.read_text(), section, start, end, before=before))
        print("wrote docs/benchmarks.md")


async def drain(absurd: AsyncAbsurd, task_id: str) -> None:
    for _ in range(50):
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
            if snapshot.state != "completed":
                raise RuntimeError(f"task {task_id} ended {snapshot.state}: {snapshot.failure}")
            return
        await absurd.work_batch(claim_timeout=300, batch_size=1)
    raise RuntimeError(f"task {task_id} did not finish")


def run_child(script: str, scenario: str, cfg: dict[str, Any], src: str | None, python: str | None) -> dict[str, Any]:
    """Run `script --child scenario cfg` in a new process and return the JSON its last line prints.

    `src` puts another source tree of the package first on the path; `python` runs a peer's own interpreter (a
    throwaway virtualenv), without this checkout's `PYTHONPATH`.
    """
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    elif python:
        env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [python or sys.executable, script, "--child", scenario, json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{scenario} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def in_fresh_database(
    script: str, admin_dsn: str, queue: str, scenario: str, cfg: dict[str, Any], src: str | None, python: str | None
) -> dict[str, Any]:
    """`run_child` on a scratch database with the schema and `queue` installed (dropped afterwards)."""
    from pydantic_ai_absurd import setup

    async with scratch_database(admin_dsn) as dsn:
        await setup(dsn, queues=[queue])
        return await asyncio.to_thread(run_child, script, scenario, {**cfg, "dsn": dsn}, src, python)
