"""A task name no worker runs: `spawn_task` refuses it, and `tasks` / `inspect` say so."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd import inspect_task
from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.client import UnknownTaskError, UnregisteredTaskError, spawn_task
from pydantic_ai_absurd.inspection import list_tasks
from pydantic_ai_absurd.inspection._render import render_timeline, task_row, unknown_task_notes
from tests.helpers.polling import wait_until
from tests.helpers.workers import running_worker


async def _registered(dsn: str, queue: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select task_name from pydantic_ai_absurd.task_registrations where queue_name = %s", (queue,)
        )
        return {str(row[0]) for row in await cur.fetchall()}


async def test_a_name_no_worker_runs_is_refused_and_shown(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @absurd_client.register_task(name="bill")
    async def bill(params: Any, ctx: AsyncTaskContext) -> str:
        return "billed"

    web = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)  # a web process: registers nothing
    try:
        async with running_worker(absurd_client, worker_id="biller"):
            await wait_until(lambda: _registered(absurd_dsn, absurd_queue))
            assert await _registered(absurd_dsn, absurd_queue) == {"bill"}

            with pytest.raises(UnknownTaskError, match=r"No worker of queue .* runs task 'bil'.*'bill'") as caught:
                await spawn_task(web, "bil", {}, queue=absurd_queue)
            assert isinstance(caught.value, UnregisteredTaskError)
            spawned = await spawn_task(web, "bill", {}, queue=absurd_queue)

            typo = await web.spawn("bil", {}, queue=absurd_queue)  # spawned by other means (absurdctl, the SDK)
            await wait_until(lambda: _claimed_once(absurd_dsn, absurd_queue, str(typo["task_id"])))

        rows = {row.task_name: row for row in await list_tasks(absurd_dsn, queue=absurd_queue)}
        assert rows["bil"].known_to_workers is False and rows["bill"].known_to_workers is True
        assert rows["bil"].to_json()["known_to_workers"] is False
        assert task_row(rows["bil"])[-1] == "no worker knows it" and task_row(rows["bill"])[-1] != "no worker knows it"
        note = f"no worker knows this task: no worker of queue {absurd_queue} registers 'bil'"
        assert [line.startswith(note) for line in unknown_task_notes(list(rows.values()))] == [True]
        assert await asyncio.to_thread(main, ["tasks", "-d", absurd_dsn, "--queue", absurd_queue]) == 0
        printed = capsys.readouterr().out
        assert note in printed and "no worker knows it" in printed

        timeline = await inspect_task(absurd_dsn, str(typo["task_id"]), queue=absurd_queue)
        assert timeline.known_to_workers is False
        assert "no worker knows this task" in render_timeline(timeline)
        assert (await inspect_task(absurd_dsn, spawned.task_id)).known_to_workers is True
    finally:
        await web.close()


async def _claimed_once(dsn: str, queue: str, task_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            f'select started_at is not null from absurd."r_{queue}" where task_id = %s', (task_id,)
        )
        row = await cur.fetchone()
        return bool(row and row[0])


async def test_a_queue_without_recorded_workers_is_not_judged(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    spawned = await spawn_task(absurd_client, "runs_elsewhere", {}, queue=absurd_queue)
    (row,) = await list_tasks(absurd_dsn, queue=absurd_queue)
    assert row.known_to_workers is None
    assert task_row(row)[-1] != "no worker knows it" and unknown_task_notes([row]) == []
    assert "no worker knows" not in render_timeline(await inspect_task(absurd_dsn, spawned.task_id))


async def test_a_role_that_cannot_read_the_registrations_still_spawns(
    absurd_client: AsyncAbsurd, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic_ai_absurd import client

    async def refused(conn: Any, queue: str) -> set[str] | None:
        raise psycopg.errors.InsufficientPrivilege("permission denied for schema pydantic_ai_absurd")

    monkeypatch.setattr(client, "registered_names", refused)
    spawned = await spawn_task(absurd_client, "runs_elsewhere", {}, queue=absurd_queue)
    assert spawned.queue == absurd_queue
