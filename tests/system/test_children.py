"""Sub-agents as child tasks, with real worker processes: fan-out, crashes, failures, cancellation.

Model calls and tool body runs are counted in Postgres (`child_calls`), never in a dead process's memory.
"""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest

from pydantic_ai_absurd import inspect_task
from tests.helpers.children import (
    calls,
    child_links,
    open_gate,
    prepare_tables,
    spawn_coordinator,
    start_worker,
    state_of,
    worker_by_pid,
)
from tests.helpers.polling import TERMINAL, wait_until
from tests.helpers.processes import Workers

pytestmark = pytest.mark.crash


@pytest.fixture
def child_workers(absurd_dsn: str, workers: Workers) -> Workers:
    """The `workers` fixture, with the tables of `children_app` created."""
    prepare_tables(absurd_dsn)
    return workers


async def _ended(dsn: str, queue: str, task_id: str) -> str | None:
    state = await state_of(dsn, queue, task_id)
    return state if state in TERMINAL else None


async def test_one_slot_runs_the_parents_then_their_children_then_the_parents_again(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=1)
    parent = await spawn_coordinator(absurd_dsn, absurd_queue, ["alpha", "beta", "gamma"])
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, parent)) == "completed"

    model_calls = Counter(topic for _, topic, _ in await calls(absurd_dsn, absurd_queue, "researcher_model"))
    assert model_calls == {"alpha": 2, "beta": 2, "gamma": 2}
    assert len(await calls(absurd_dsn, absurd_queue, "coordinator_model")) == 2
    # The tool body ran once to spawn all three, then again after each wake-up at most.
    assert 2 <= len(await calls(absurd_dsn, absurd_queue, "research_body")) <= 4
    children = await child_links(absurd_dsn, absurd_queue, parent)
    assert [state for _, _, state in children] == ["completed"] * 3

    timeline = await inspect_task(absurd_dsn, parent, queue=absurd_queue)
    assert timeline.result is not None and "alpha" in timeline.result["output"]
    assert [child.state for child in timeline.children] == ["completed"] * 3
    assert all(child.output_preview and child.task_name == "researcher" for child in timeline.children)
    spent_by_children = sum(child.usage.total_tokens for child in timeline.children)
    assert spent_by_children > 0
    assert timeline.total_usage.total_tokens == timeline.totals.tokens_spent.total_tokens + spent_by_children
    child = await inspect_task(absurd_dsn, children[0][1], queue=absurd_queue)
    assert child.parent is not None and child.parent.task_id == parent

    # Two parallel tool calls in one model response: all four children spawn before the parent suspends.
    split = await spawn_coordinator(absurd_dsn, absurd_queue, ["w", "x", "y", "z"], split=True)
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, split)) == "completed"
    assert len(await child_links(absurd_dsn, absurd_queue, split)) == 4
    model_calls = Counter(topic for _, topic, _ in await calls(absurd_dsn, absurd_queue, "researcher_model"))
    assert {topic: model_calls[topic] for topic in "wxyz"} == {"w": 2, "x": 2, "y": 2, "z": 2}
    timeline = await inspect_task(absurd_dsn, split, queue=absurd_queue)
    assert timeline.result is not None and "'w'" in timeline.result["output"] and "'z'" in timeline.result["output"]
    assert [attempt.ended for attempt in timeline.attempts] == ["completed"]


async def test_fan_out_runs_the_children_in_parallel_on_two_workers_of_another_queue(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    child_queue = f"{absurd_queue}_kids"
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        conn.execute("select absurd.create_queue(%s)", (child_queue,))
    try:
        settings = {"child_queue": child_queue}
        start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=1, **settings)
        topics = ["gate:a", "gate:b", "gate:c"]
        for _ in range(2):  # two slots each: the third child can only run on the other worker
            start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=2, work_queue=child_queue, **settings)
        parent = await spawn_coordinator(absurd_dsn, absurd_queue, topics)

        async def all_started() -> list[tuple[str, str, int]]:
            started = await calls(absurd_dsn, absurd_queue, "lookup_start")
            return started if len(started) == 3 else []

        started = await wait_until(all_started)
        assert len({pid for _, _, pid in started}) == 2  # all three at once, on both child workers
        assert await state_of(absurd_dsn, absurd_queue, parent) == "sleeping"
        for topic in topics:
            await open_gate(absurd_dsn, absurd_queue, topic)
        assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, parent)) == "completed"
        links = await child_links(absurd_dsn, absurd_queue, parent)
        assert [(queue, state) for queue, _, state in links] == [(child_queue, "completed")] * 3
    finally:
        with psycopg.connect(absurd_dsn, autocommit=True) as conn:
            conn.execute("select absurd.drop_queue(%s)", (child_queue,))


async def test_killing_the_workers_of_the_parent_and_of_a_child_changes_no_result(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    for _ in range(2):
        start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=2, claim_timeout=3)
    topics = ["gate:x", "gate:y", "gate:z"]
    parent = await spawn_coordinator(absurd_dsn, absurd_queue, topics)

    async def all_started() -> list[tuple[str, str, int]]:
        started = await calls(absurd_dsn, absurd_queue, "lookup_start")
        return started if len(started) == 3 else []

    started = await wait_until(all_started)
    (_, _, parent_pid), *_ = await calls(absurd_dsn, absurd_queue, "coordinator_model")
    victims = {parent_pid, started[0][2]}  # the parent's worker, and a child's (maybe the same one)
    for pid in victims:
        victim = worker_by_pid(child_workers, pid)
        victim.kill()  # SIGKILL
        await victim.wait_exit()
    start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=3, claim_timeout=3)
    for topic in topics:
        await open_gate(absurd_dsn, absurd_queue, topic)
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, parent)) == "completed"

    # Each child spawned once; a child's committed first model call never ran again (its tool did, if killed).
    assert [state for _, _, state in await child_links(absurd_dsn, absurd_queue, parent)] == ["completed"] * 3
    model_calls = Counter(topic for _, topic, _ in await calls(absurd_dsn, absurd_queue, "researcher_model"))
    assert model_calls == {topic: 2 for topic in topics}
    assert len(await calls(absurd_dsn, absurd_queue, "coordinator_model")) == 2
    lookups = Counter(topic for _, topic, pid in await calls(absurd_dsn, absurd_queue, "lookup_start"))
    killed = {topic for _, topic, pid in started if pid in victims}
    assert lookups == {topic: 2 if topic in killed else 1 for topic in topics}


async def test_a_failed_child_raises_in_the_parent_and_a_failed_parent_cancels_the_rest(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=3)
    caught = await spawn_coordinator(absurd_dsn, absurd_queue, ["fine", "fail1"], catch=True, child_attempts=1)
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, caught)) == "completed"
    timeline = await inspect_task(absurd_dsn, caught, queue=absurd_queue)
    assert timeline.result is not None
    assert "failed: Child task 'researcher'" in timeline.result["output"]
    assert "failed for good: RuntimeError: no sources for fail1" in timeline.result["output"]

    uncaught = await spawn_coordinator(absurd_dsn, absurd_queue, ["fail2", "gate:never"], child_attempts=1)
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, uncaught)) == "failed"
    links = await wait_until(
        lambda: _all_ended(absurd_dsn, absurd_queue, uncaught),
    )
    assert sorted(state for _, _, state in links) == ["cancelled", "failed"]
    assert len(await calls(absurd_dsn, absurd_queue, "coordinator_model")) == 3  # once more for the caught one


async def _all_ended(dsn: str, queue: str, parent: str) -> list[tuple[str, str, str]]:
    links = await child_links(dsn, queue, parent)
    return links if links and all(state in TERMINAL for _, _, state in links) else []


async def test_cancelling_the_parent_cancels_its_children_and_theirs(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=4)
    parent = await spawn_coordinator(absurd_dsn, absurd_queue, ["gate:p", "deep gate:q"])

    async def blocked() -> bool:
        started = {topic for _, topic, _ in await calls(absurd_dsn, absurd_queue, "lookup_start")}
        helped = await calls(absurd_dsn, absurd_queue, "helper_model")
        return started == {"gate:p", "deep gate:q"} and len(helped) == 1

    await wait_until(blocked)
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:  # Absurd's own cancel: none of our code runs
        conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, parent))
    children = await child_links(absurd_dsn, absurd_queue, parent)
    assert [state for _, _, state in children] == ["cancelled", "cancelled"]
    # Both children were spawned at once, so their order is not known: the deep one is the one with a child.
    grandchildren = [link for _, child, _ in children for link in await child_links(absurd_dsn, absurd_queue, child)]
    assert [state for _, _, state in grandchildren] == ["cancelled"]
    timeline = await inspect_task(absurd_dsn, parent, queue=absurd_queue)
    assert [child.state for child in timeline.children] == ["cancelled", "cancelled"]


async def test_a_retried_parent_spawns_no_second_child(
    absurd_dsn: str, absurd_queue: str, child_workers: Workers
) -> None:
    start_worker(child_workers, absurd_dsn, absurd_queue, concurrency=1)
    parent = await spawn_coordinator(absurd_dsn, absurd_queue, ["one", "two"], crash_after_children=True)
    assert await wait_until(lambda: _ended(absurd_dsn, absurd_queue, parent)) == "completed"
    assert len(await child_links(absurd_dsn, absurd_queue, parent)) == 2
    model_calls = Counter(topic for _, topic, _ in await calls(absurd_dsn, absurd_queue, "researcher_model"))
    assert model_calls == {"one": 2, "two": 2}
    timeline = await inspect_task(absurd_dsn, parent, queue=absurd_queue)
    assert len(timeline.attempts) == 2
