"""Retry policy applied by the worker: backoff by default, immediate recorded failure for hopeless errors."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pydantic
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from pydantic_ai.exceptions import UserError

from pydantic_ai_absurd.worker._retry import (
    AGENT_RETRY_STRATEGY,
    NonRetryableError,
    RetryPolicy,
    TaskResultNotSerializableError,
    agent_retry_hooks,
)
from tests.helpers.polling import wait_until
from tests.helpers.sql import runs, task_state
from tests.helpers.workers import running_worker


def _queue(absurd: AsyncAbsurd) -> str:
    return absurd._queue_name  # pyright: ignore[reportPrivateUsage]


class Params(pydantic.BaseModel):
    n: int


class Boom(Exception):
    pass


class MyFatal(Exception):
    pass


def _raiser(kind: str) -> Any:
    if kind == "non_retryable":
        raise NonRetryableError("bad input, will never work")
    if kind == "validation":
        Params.model_validate({"n": "not a number"})
    if kind == "user_error":
        raise UserError("misconfigured agent")
    if kind == "unserializable":
        return {"when": object()}
    if kind == "custom":
        raise MyFatal("custom non-retryable type")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "reason", "name"),
    [
        ("non_retryable", "non_retryable_error", "NonRetryableError"),
        ("validation", "validation_error", "ValidationError"),
        ("user_error", "user_error", "UserError"),
        ("unserializable", "result_not_serializable", "TaskResultNotSerializableError"),
        ("custom", "non_retryable_type", "MyFatal"),
    ],
)
async def test_non_retryable_errors_fail_the_task_at_once(
    absurd_client: AsyncAbsurd, absurd_dsn: str, kind: str, reason: str, name: str
) -> None:
    calls: list[str] = []

    @absurd_client.register_task(name="hopeless")
    async def hopeless(params: str, ctx: AsyncTaskContext) -> Any:
        calls.append(params)
        return _raiser(params)

    spawned = await absurd_client.spawn("hopeless", kind, max_attempts=5)
    policy = RetryPolicy(non_retryable=(*RetryPolicy().non_retryable, MyFatal))
    async with running_worker(absurd_client, retry_policy=policy):
        await wait_until(lambda: _terminal(absurd_client, spawned["task_id"]))
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.state == "failed"
    failure = snapshot.failure
    assert isinstance(failure, dict)
    assert failure["name"] == name
    assert failure["retryable"] is False
    assert failure["non_retryable_reason"] == reason
    assert calls == [kind]
    state = await task_state(absurd_dsn, _queue(absurd_client), spawned["task_id"])
    assert (state["state"], state["attempts"]) == ("failed", 1)
    # A manual retry after a fix is still possible.
    retried = await absurd_client.retry_task(spawned["task_id"])
    assert retried["attempt"] == 2


async def _terminal(absurd: AsyncAbsurd, task_id: str) -> bool:
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state in ("completed", "failed", "cancelled")


async def test_retryable_error_backs_off_by_default(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    calls: list[int] = []

    @absurd_client.register_task(name="flaky")
    async def flaky(params: Any, ctx: AsyncTaskContext) -> str:
        calls.append(1)
        raise Boom("rate limited")

    spawned = await absurd_client.spawn("flaky", None)  # no retry_strategy: the worker's default applies
    queue = _queue(absurd_client)
    async with running_worker(absurd_client):
        await wait_until(lambda: _has_runs(absurd_dsn, queue, spawned["task_id"], 2))
    rows = await runs(absurd_dsn, queue, spawned["task_id"])
    assert [(r["attempt"], r["state"]) for r in rows] == [(1, "failed"), (2, "sleeping")]
    assert rows[0]["failure_reason"]["retryable"] is True
    assert rows[0]["failure_reason"]["name"] == "Boom"
    delay = rows[1]["available_at"] - rows[0]["failed_at"]
    base = timedelta(seconds=AGENT_RETRY_STRATEGY.get("base_seconds", 0))
    assert base - timedelta(seconds=0.5) <= delay <= base + timedelta(seconds=0.5)
    assert calls == [1]


async def _has_runs(dsn: str, queue: str, task_id: str, n: int) -> bool:
    return len(await runs(dsn, queue, task_id)) >= n


async def test_task_own_retry_strategy_wins(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    calls: list[int] = []

    @absurd_client.register_task(name="flaky")
    async def flaky(params: Any, ctx: AsyncTaskContext) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Boom("transient")
        return "ok"

    spawned = await absurd_client.spawn("flaky", None, retry_strategy={"kind": "none"})
    async with running_worker(absurd_client):
        await wait_until(lambda: _terminal(absurd_client, spawned["task_id"]))
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert (snapshot.state, snapshot.result) == ("completed", "ok")
    assert len(calls) == 3


async def test_attempts_exhausted_fails(absurd_client: AsyncAbsurd) -> None:
    @absurd_client.register_task(name="always")
    async def always(params: Any, ctx: AsyncTaskContext) -> str:
        raise Boom("nope")

    spawned = await absurd_client.spawn("always", None, max_attempts=2, retry_strategy={"kind": "none"})
    async with running_worker(absurd_client) as worker:
        await wait_until(lambda: _terminal(absurd_client, spawned["task_id"]))
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.state == "failed"
    assert (worker.health.retried, worker.health.failed) == (1, 1)


async def test_policy_without_default_strategy_keeps_absurd_immediate_retry(
    absurd_client: AsyncAbsurd, absurd_dsn: str
) -> None:
    calls: list[int] = []

    @absurd_client.register_task(name="flaky")
    async def flaky(params: Any, ctx: AsyncTaskContext) -> str:
        calls.append(1)
        if len(calls) < 2:
            raise Boom("transient")
        return "ok"

    spawned = await absurd_client.spawn("flaky", None)
    async with running_worker(absurd_client, retry_policy=RetryPolicy(default_strategy=None)):
        await wait_until(lambda: _terminal(absurd_client, spawned["task_id"]))
    assert len(calls) == 2


def test_non_retryable_reason_respects_a_custom_tuple() -> None:
    policy = RetryPolicy(non_retryable=())
    assert policy.non_retryable_reason(UserError("x")) is None
    assert policy.non_retryable_reason(NonRetryableError("x")) == "non_retryable_error"
    assert policy.non_retryable_reason(TaskResultNotSerializableError("x")) == "result_not_serializable"
    assert RetryPolicy().non_retryable_reason(Boom()) is None


async def test_agent_retry_hooks_set_the_strategy_at_spawn(absurd_dsn: str, absurd_queue: str) -> None:
    seen: list[str] = []

    def earlier(task_name: str, params: Any, options: Any) -> Any:
        seen.append(task_name)
        return {**options, "headers": {"trace": "t1"}}

    client = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue, hooks=agent_retry_hooks({"before_spawn": earlier}))
    try:

        @client.register_task(name="t")
        async def t(params: Any, ctx: AsyncTaskContext) -> None:
            return None

        default = await client.spawn("t", None)
        explicit = await client.spawn("t", None, retry_strategy={"kind": "fixed", "base_seconds": 1})
    finally:
        await client.close()
    assert seen == ["t", "t"]
    stored = await task_state(absurd_dsn, absurd_queue, default["task_id"])
    assert stored["retry_strategy"] == json.loads(json.dumps(AGENT_RETRY_STRATEGY))
    stored = await task_state(absurd_dsn, absurd_queue, explicit["task_id"])
    assert stored["retry_strategy"] == {"kind": "fixed", "base_seconds": 1}
