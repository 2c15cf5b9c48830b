"""Clients behind a real PgBouncer in transaction pooling: connections, spawners, the inbox, events, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd import Inbox, stream_events
from pydantic_ai_absurd._db import connect_async  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.client import fetch_result, spawn_task
from pydantic_ai_absurd.events import _reader as reader  # pyright: ignore[reportPrivateUsage]
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.apps.verify_app import build_app
from tests.helpers.events import streaming_agent
from tests.helpers.inbox import approval_agent
from tests.helpers.pgbouncer import require_pgbouncer, running_pgbouncer
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.processes import Workers
from tests.helpers.workers import is_completed, running_worker

QUERY = "select %s::int + 1"


async def _switch_server_after_prepare(conn: psycopg.AsyncConnection[Any], dsn: str) -> None:
    """Run QUERY past psycopg's prepare threshold, then again while another client holds that server connection."""
    for i in range(6):
        await conn.execute(QUERY, (i,))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other, other.transaction():
        await other.execute("select 1")  # takes the server connection `conn` used last (PgBouncer reuses it first)
        await conn.execute(QUERY, (7,))


async def test_our_connections_survive_the_server_switch_that_breaks_psycopg_defaults(absurd_dsn: str) -> None:
    require_pgbouncer()
    with running_pgbouncer(absurd_dsn, pool_size=4) as pooled:  # its own: the control leaves prepared statements
        async with await connect_async(pooled, autocommit=True) as ours:
            assert ours.prepare_threshold is None
            await _switch_server_after_prepare(ours, pooled)
        async with await psycopg.AsyncConnection.connect(pooled, autocommit=True) as default:
            with pytest.raises(psycopg.Error, match="prepared statement"):
                await _switch_server_after_prepare(default, pooled)
    async with await connect_async(absurd_dsn, autocommit=True) as direct:
        assert direct.prepare_threshold == 5  # a proven direct connection keeps psycopg's prepared statements


async def test_a_client_built_from_a_dsn_spawns_and_reads_results_behind_pgbouncer(
    pgbouncer_dsn: str, absurd_queue: str
) -> None:
    client = AsyncAbsurd(pgbouncer_dsn, queue_name=absurd_queue)
    try:

        @client.register_task(name="noop")
        async def noop(params: Any, ctx: AsyncTaskContext) -> None:
            return None

        for i in range(8):  # past psycopg's prepare threshold, each time on another server connection
            other = await psycopg.AsyncConnection.connect(pgbouncer_dsn, autocommit=True)
            async with other, other.transaction():
                await other.execute("select 1")
                spawned = await spawn_task(client, "noop", {"i": i}, idempotency_key=f"k{i}")
                status = await fetch_result(client, spawned.task_id)
            assert status.state == "pending"
    finally:
        await client.close()


# -- events -------------------------------------------------------------------------------------------------------


def _register_chat(absurd: AsyncAbsurd) -> None:
    agent, _ = streaming_agent(absurd, words=3)

    @absurd.register_task(name="chat")
    async def chat(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        result = await agent.run(params["prompt"])
        return {"output": result.output}


async def _read_live(pooled_client: AsyncAbsurd, **options: Any) -> list[str]:
    """Start a reader on a task that has not run yet, then run it with a worker behind PgBouncer."""
    _register_chat(pooled_client)
    spawned = await pooled_client.spawn("chat", {"prompt": "hi"})
    # A minute between reads unless told: the reader only finishes in time if it is woken (or polls faster).
    events = stream_events(pooled_client, spawned["task_id"], poll_interval=60, **options)
    reading = asyncio.ensure_future(_kinds(events))
    async with running_worker(pooled_client, worker_id="events"):
        kinds = await asyncio.wait_for(reading, WAIT)
    return kinds


async def _kinds(events: AsyncIterator[Any]) -> list[str]:
    return [item.kind async for item in events]


async def test_a_reader_behind_pgbouncer_listens_on_listen_dsn(
    pooled_client: AsyncAbsurd, absurd_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.events"):
        kinds = await _read_live(pooled_client, listen_dsn=absurd_dsn)
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert not [r for r in caplog.records if "poll the log" in r.getMessage()]


async def test_a_reader_behind_pgbouncer_without_listen_dsn_polls_and_says_so(
    pooled_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(reader, "_said_polling", set())
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.events"):
        kinds = await _read_live(pooled_client)
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    lines = [r.getMessage() for r in caplog.records if "poll the log" in r.getMessage()]
    assert len(lines) == 1 and "listen_dsn" in lines[0] and "PgBouncer" in lines[0]


# -- the inbox ----------------------------------------------------------------------------------------------------


async def test_an_approval_round_trip_behind_pgbouncer(pooled_client: AsyncAbsurd) -> None:
    inbox = Inbox(pooled_client)
    agent, _, counters = approval_agent(inbox)

    @pooled_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("clean up")).output

    spawned = await pooled_client.spawn("ops", {})
    async with running_worker(pooled_client, worker_id="inbox"):
        [request] = await wait_until(lambda: inbox.pending(task_id=str(spawned["task_id"])))
        assert await inbox.approve(request.token, answered_by="alice") is None
        await wait_until(lambda: is_completed(pooled_client, spawned["task_id"]))
    assert counters.runs == {"delete_file": 1}
    assert await inbox.pending(task_id=str(spawned["task_id"])) == []


# -- every CLI command --------------------------------------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _waiting_requests(absurd: AsyncAbsurd, n: int) -> list[str]:
    """`n` tasks waiting for an approval (run with the direct client); their tokens."""
    inbox = Inbox(absurd)
    agent, _, _ = approval_agent(inbox, calls=[("lookup", {"key": "k"}, "l1"), ("delete_file", {"path": "/a"}, "d1")])

    @absurd.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> Any:
        return (await agent.run("clean up")).output

    ids = [str((await absurd.spawn("ops", {}))["task_id"]) for _ in range(n)]
    await run_queued(absurd)
    return [request.token for request in await inbox.pending() if request.task_id in ids]


async def test_inbox_commands_behind_pgbouncer(
    absurd_client: AsyncAbsurd, pgbouncer_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = await _waiting_requests(absurd_client, 3)
    db = ("--database", pgbouncer_dsn, "--queue", absurd_queue)
    code, out, err = await cli(capsys, "inbox", "--json", *db)
    assert code == 0, err
    assert sorted(item["token"] for item in json.loads(out)) == sorted(tokens)
    code, out, err = await cli(capsys, "approve", tokens[0], "--call", "d1", *db)
    assert code == 0 and out.startswith(f"Approved {tokens[0]}"), err
    code, out, err = await cli(capsys, "deny", tokens[1], "--reason", "no", *db)
    assert code == 0 and out.startswith(f"Denied {tokens[1]}"), err
    results = json.dumps({"calls": {"l1": "v"}, "approvals": {"d1": True}})
    code, out, err = await cli(capsys, "answer", tokens[2], "--results", results, *db)
    assert code == 0, err
    code, out, err = await cli(capsys, "inbox", *db)
    assert code == 0 and tokens[2] not in out, err  # answered in full (a deny leaves the lookup pending)


async def test_task_commands_behind_pgbouncer(
    absurd_dsn: str,
    pgbouncer_dsn: str,
    absurd_queue: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = build_app(absurd_dsn, absurd_queue)
    try:
        recorded = str((await app.absurd.spawn("bill", {"prompt": "bill it"}))["task_id"])
        await run_queued(app.absurd)
    finally:
        await app.absurd.close()
    db = ("--database", pgbouncer_dsn, "--queue", absurd_queue)
    assert (await cli(capsys, "init", *db))[0] == 0
    code, out, err = await cli(capsys, "tasks", *db)
    assert code == 0 and recorded in out, err
    code, out, err = await cli(capsys, "inspect", recorded, "--json", *db)
    assert code == 0 and json.loads(out)["task_id"] == recorded, err
    monkeypatch.setenv("VERIFY_DSN", pgbouncer_dsn)
    monkeypatch.setenv("VERIFY_QUEUE", absurd_queue)
    sys.modules.pop("tests.helpers.apps.verify_cli_app", None)
    target = "tests.helpers.apps.verify_cli_app:absurd"
    code, out, err = await cli(capsys, "verify", target, "--task", recorded, *db)
    assert code == 0 and "1 ok, 0 not ok" in out, err
    code, out, err = await cli(capsys, "fork", recorded, "--at", "1", *db)
    assert code == 0, err
    forked = out.strip()
    code, out, err = await cli(capsys, "cancel", forked, *db)
    assert code == 0, err
    code, out, err = await cli(capsys, "tasks", "--state", "cancelled", *db)
    assert code == 0 and forked in out, err


async def test_the_worker_command_behind_pgbouncer(
    absurd_client: AsyncAbsurd, effects: str, pgbouncer_dsn: str, absurd_queue: str, workers: Workers
) -> None:
    command = [sys.executable, "-m", "pydantic_ai_absurd.cli", "worker", "tests.helpers.apps.worker_app:absurd"]
    command += ["--database", pgbouncer_dsn, "--queue", absurd_queue, "--poll-interval", "0.1"]
    worker = workers.worker(pgbouncer_dsn, absurd_queue, command=command, log="cli-worker")
    spawned = await absurd_client.spawn("steps", {"steps": 8, "step_seconds": 0}, queue=absurd_queue)
    await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
    worker.send_signal(signal.SIGTERM)
    code = await worker.wait_exit()
    output = worker.output()
    assert code == 0, output
    assert "fast takeover by liveness row" in output and "prepared statement" not in output
