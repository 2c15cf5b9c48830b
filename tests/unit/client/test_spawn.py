"""Spawn helpers for web handlers: idempotency, unregistered tasks, missing queues, typed results."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd.client import (
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskResultTimeoutError,
    UnregisteredTaskError,
    fetch_result,
    spawn_task,
    wait_for_result,
)
from pydantic_ai_absurd.errors import QueueNotFoundError
from pydantic_ai_absurd.worker._retry import AGENT_RETRY_STRATEGY, NonRetryableError
from tests.helpers.polling import WAIT
from tests.helpers.sql import task_state
from tests.helpers.workers import running_worker


class Question(pydantic.BaseModel):
    prompt: str


class Answer(pydantic.BaseModel):
    text: str
    tokens: int


def _register(absurd: AsyncAbsurd, calls: list[Any] | None = None) -> None:
    @absurd.register_task(name="answer")
    async def answer(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        if calls is not None:
            calls.append(params)
        if params["prompt"] == "fail":
            raise NonRetryableError("cannot answer that")
        if params["prompt"] == "slow":
            await asyncio.sleep(WAIT)
        return {"text": params["prompt"].upper(), "tokens": 3}


async def test_idempotency_key_yields_one_task(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    calls: list[Any] = []
    _register(absurd_client, calls)
    first = await spawn_task(absurd_client, "answer", Question(prompt="hi"), idempotency_key="form-123")
    again = await spawn_task(absurd_client, "answer", Question(prompt="different"), idempotency_key="form-123")
    other = await spawn_task(absurd_client, "answer", Question(prompt="hi"), idempotency_key="form-456")
    assert first.task_id == again.task_id
    assert first.run_id == again.run_id
    assert other.task_id != first.task_id
    assert first.queue == absurd_queue
    async with running_worker(absurd_client):
        result = await wait_for_result(absurd_client, first.task_id, timeout=WAIT, result_type=Answer)
        await wait_for_result(absurd_client, other.task_id, timeout=WAIT)
    assert result == Answer(text="HI", tokens=3)
    assert calls == [{"prompt": "hi"}, {"prompt": "hi"}]
    # After completion the key still maps to the same task: no second run.
    late = await spawn_task(absurd_client, "answer", {"prompt": "hi"}, idempotency_key="form-123")
    assert late.task_id == first.task_id
    assert (await task_state(absurd_dsn, absurd_queue, first.task_id))["state"] == "completed"


async def test_concurrent_double_submit_yields_one_task(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    _register(absurd_client)
    clients = [AsyncAbsurd(absurd_dsn, queue_name=absurd_client._queue_name) for _ in range(4)]  # pyright: ignore[reportPrivateUsage]
    try:
        spawned = await asyncio.gather(
            *(spawn_task(c, "answer", {"prompt": "x"}, queue=c._queue_name, idempotency_key="hook-1") for c in clients)  # pyright: ignore[reportPrivateUsage]
        )
    finally:
        for c in clients:
            await c.close()
    assert len({s.task_id for s in spawned}) == 1


async def test_spawn_stores_no_retry_strategy_unless_given(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    """The worker's RetryPolicy backs off after errors; a stored strategy would also delay crash recovery."""
    _register(absurd_client)
    plain = await spawn_task(absurd_client, "answer", {"prompt": "x"})
    assert (await task_state(absurd_dsn, absurd_queue, plain.task_id))["retry_strategy"] is None
    explicit = await spawn_task(absurd_client, "answer", {"prompt": "x"}, retry_strategy=AGENT_RETRY_STRATEGY)
    stored = await task_state(absurd_dsn, absurd_queue, explicit.task_id)
    assert stored["retry_strategy"] == dict(AGENT_RETRY_STRATEGY)


async def test_unregistered_task_needs_queue(absurd_dsn: str, absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    web = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)  # the web process registers nothing
    try:
        with pytest.raises(UnregisteredTaskError, match="queue="):
            await spawn_task(web, "answer", {"prompt": "hi"})
        spawned = await spawn_task(web, "answer", {"prompt": "hi"}, queue=absurd_queue)
        _register(absurd_client)  # the worker process registers it
        async with running_worker(absurd_client):
            assert await wait_for_result(web, spawned.task_id, timeout=WAIT) == {"text": "HI", "tokens": 3}
    finally:
        await web.close()


async def test_missing_queue_is_a_clear_error(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(QueueNotFoundError, match="pydantic-ai-absurd init --queue no_such_q"):
        await spawn_task(absurd_client, "answer", {}, queue="no_such_q")
    with pytest.raises(QueueNotFoundError, match="no_such_q"):
        await fetch_result(absurd_client, "01a216fa-e62e-72e1-be14-a30b3334a3eb", queue="no_such_q")


async def test_failed_cancelled_missing_and_timeout(absurd_client: AsyncAbsurd) -> None:
    _register(absurd_client)
    failed = await spawn_task(absurd_client, "answer", {"prompt": "fail"})
    slow = await spawn_task(absurd_client, "answer", {"prompt": "slow"})
    pending = await spawn_task(absurd_client, "answer", {"prompt": "later"})
    status = await fetch_result(absurd_client, pending.task_id)
    assert (status.state, status.done) == ("pending", False)
    with pytest.raises(ValueError, match="still pending"):
        status.output()
    with pytest.raises(TaskResultTimeoutError, match="keeps running"):
        await wait_for_result(absurd_client, pending.task_id, timeout=0.1)
    await absurd_client.cancel_task(pending.task_id)
    with pytest.raises(TaskCancelledError):
        await wait_for_result(absurd_client, pending.task_id)
    async with running_worker(absurd_client, concurrency=2, claim_timeout=1):
        with pytest.raises(TaskFailedError, match=r"not retried.*NonRetryableError: cannot answer that") as info:
            await wait_for_result(absurd_client, failed.task_id, timeout=WAIT)
        assert info.value.failure["retryable"] is False
        assert info.value.task_id == failed.task_id
        await absurd_client.cancel_task(slow.task_id)
        with pytest.raises(TaskCancelledError):
            await wait_for_result(absurd_client, slow.task_id, timeout=WAIT)
    with pytest.raises(TaskNotFoundError, match="No task"):
        await fetch_result(absurd_client, "01a216fa-e62e-72e1-be14-a30b3334a3eb")
    with pytest.raises(TaskNotFoundError, match="not a task id"):
        await wait_for_result(absurd_client, "nope")
    status = await fetch_result(absurd_client, failed.task_id)
    assert status.state == "failed"
    with pytest.raises(TaskFailedError):
        status.output()
