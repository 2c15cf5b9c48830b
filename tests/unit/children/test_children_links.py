"""The parent/child links in Postgres and their triggers, driven by Absurd's SQL alone (no worker runs them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest_asyncio
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent
from pydantic_ai_absurd._absurd import spawn_linked_child, task_end
from pydantic_ai_absurd.children import EVENT_PREFIX, cancel_descendants, install_triggers, read_children, read_parent
from pydantic_ai_absurd.children._codec import ChildRequest, ParentLink
from tests.helpers.polling import wait_until
from tests.helpers.workers import running_worker


@pytest_asyncio.fixture
async def conn(absurd_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as connection:
        yield connection


@pytest_asyncio.fixture
async def other_queue(absurd_dsn: str, absurd_queue: str) -> AsyncIterator[str]:
    name = f"{absurd_queue}_c"
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as connection:
        await connection.execute("select absurd.create_queue(%s)", (name,))
        yield name
        await connection.execute("select absurd.drop_queue(%s)", (name,))


async def _spawn(conn: psycopg.AsyncConnection[Any], queue: str, name: str = "parent") -> str:
    cur = await conn.execute(
        "select task_id::text from absurd.spawn_task(%s, %s, '{}'::jsonb, '{}'::jsonb)", (queue, name)
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def _child(
    conn: psycopg.AsyncConnection[Any], queue: str, parent_queue: str, parent: str, name: str = "kid"
) -> str:
    params = ChildRequest.of("hello", None, None).params(ParentLink(parent_queue, parent))
    child, _ = await spawn_linked_child(
        conn,
        queue_name=queue,
        task_name=name,
        params=params,
        options={"idempotency_key": f"{parent}:{name}"},
        parent_queue=parent_queue,
        parent_task_id=parent,
        call_site=f"site:{name}",
        request_key="k1",
        event_prefix=EVENT_PREFIX,
    )
    return child


async def _state(conn: psycopg.AsyncConnection[Any], queue: str, task_id: str) -> str | None:
    end = await task_end(conn, queue, task_id)
    return None if end is None else end[0]


async def test_a_child_on_another_queue_wakes_its_parent_on_the_parents_queue(
    conn: psycopg.AsyncConnection[Any], absurd_queue: str, other_queue: str
) -> None:
    for queue in (absurd_queue, other_queue):
        await install_triggers(conn, queue)
    parent = await _spawn(conn, absurd_queue)
    child = await _child(conn, other_queue, absurd_queue, parent)
    assert await _child(conn, other_queue, absurd_queue, parent) == child  # the idempotency key: spawned once
    assert [link.task_id for link in await read_children(conn, absurd_queue, parent)] == [child]
    link = await read_parent(conn, other_queue, child)
    assert link is not None and (link.parent_queue, link.parent_task_id) == (absurd_queue, parent)

    await conn.execute("select absurd.cancel_task(%s, %s)", (other_queue, child))
    cur = await conn.execute(
        f"select payload from absurd.e_{absurd_queue} where event_name = %s",
        (EVENT_PREFIX + child,),
    )
    row = await cur.fetchone()
    assert row is not None and row[0] == {"state": "cancelled"}
    assert await _state(conn, absurd_queue, parent) == "pending"


async def test_cancelling_a_parent_cancels_its_descendants_and_deleting_it_drops_the_links(
    conn: psycopg.AsyncConnection[Any], absurd_queue: str, other_queue: str
) -> None:
    for queue in (absurd_queue, other_queue):
        await install_triggers(conn, queue)
    parent = await _spawn(conn, absurd_queue)
    child = await _child(conn, other_queue, absurd_queue, parent)
    grandchild = await _child(conn, absurd_queue, other_queue, child, "grandkid")
    await conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, parent))
    assert await _state(conn, other_queue, child) == "cancelled"
    assert await _state(conn, absurd_queue, grandchild) == "cancelled"
    assert await cancel_descendants(conn, absurd_queue, parent) == []  # nothing left to cancel

    await conn.execute(f"delete from absurd.t_{absurd_queue} where task_id = %s", (parent,))
    assert await read_children(conn, absurd_queue, parent) == []
    assert await read_parent(conn, other_queue, child) is None


async def test_the_eager_cascade_cancels_children_on_a_queue_without_triggers(
    conn: psycopg.AsyncConnection[Any], absurd_queue: str, other_queue: str
) -> None:
    parent = await _spawn(conn, absurd_queue)
    child = await _child(conn, other_queue, absurd_queue, parent)
    await conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, parent))
    assert await _state(conn, other_queue, child) == "pending"  # these fresh queues have no triggers
    assert await cancel_descendants(conn, absurd_queue, parent) == [child]
    assert await _state(conn, other_queue, child) == "cancelled"


async def test_a_child_of_a_cancelled_parent_cancels_itself_before_its_first_step(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    asked: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append("called")
        return ModelResponse(parts=[TextPart("never")])

    kid = AbsurdAgent(Agent(FunctionModel(model), name="kid"), absurd_client)
    assert kid.register_task() == "kid"
    parent = await _spawn(conn, absurd_queue)
    await conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, parent))
    # Spawned while its parent was being cancelled: the parent's cancel found no link to follow.
    child = await _child(conn, absurd_queue, absurd_queue, parent)
    async with running_worker(absurd_client, concurrency=1):
        await wait_until(lambda: _is(conn, absurd_queue, child, "cancelled"))
    assert asked == []


async def _is(conn: psycopg.AsyncConnection[Any], queue: str, task_id: str, state: str) -> bool:
    return await _state(conn, queue, task_id) == state


async def test_a_running_child_stops_when_its_parent_ends_without_a_cascade(
    absurd_client: AsyncAbsurd, absurd_queue: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    stopped: list[str] = []
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        entered.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            stopped.append("aborted")
            raise
        return ModelResponse(parts=[TextPart("too late")])

    AbsurdAgent(Agent(FunctionModel(model), name="kid"), absurd_client).register_task()
    parent = await _spawn(conn, absurd_queue)
    child = await _child(conn, absurd_queue, absurd_queue, parent)  # this queue has no triggers: no cascade
    async with running_worker(absurd_client, concurrency=1, claim_timeout=1):  # the watcher checks every 0.5 s
        # In its model call, past the check of its parent before the first step: a parent cancelled between the
        # claim (the child is `running` already) and that check would stop the child before it ever ran.
        await wait_until(entered.is_set)
        await conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, parent))
        assert await _state(conn, absurd_queue, child) == "running"
        await wait_until(lambda: _is(conn, absurd_queue, child, "cancelled"))  # the child's watcher
        await wait_until(lambda: stopped)
    assert stopped == ["aborted"]
