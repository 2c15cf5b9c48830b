from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd.schema import check_schema_sync
from pydantic_ai_absurd.testing import run_queued
from pydantic_ai_absurd.testing.pytest_plugin import TEST_DATABASE_ENV, provision_test_database
from tests.helpers.infra import fresh_database


async def test_fixtures_give_a_working_queue(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    @absurd_client.register_task(name="double")
    async def double(params: dict[str, int], ctx: AsyncTaskContext) -> dict[str, int]:
        value = await ctx.step("compute", lambda: _async(params["x"] * 2))
        return {"y": value}

    spawned = await absurd_client.spawn("double", {"x": 21})
    assert await run_queued(absurd_client) == 1
    snap = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snap is not None
    assert snap.state == "completed"
    assert snap.result == {"y": 42}
    with psycopg.connect(absurd_dsn) as conn:
        assert conn.execute("select 1 from absurd.queues where queue_name=%s", (absurd_queue,)).fetchone()


async def _async(v: int) -> int:
    return v


async def test_run_queued_does_not_spin_on_suspended_tasks(absurd_client: AsyncAbsurd) -> None:
    @absurd_client.register_task(name="nap")
    async def nap(params: dict[str, int], ctx: AsyncTaskContext) -> str:
        await ctx.sleep_for("nap", 3600)
        return "woke"

    @absurd_client.register_task(name="wait")
    async def wait(params: dict[str, int], ctx: AsyncTaskContext) -> object:
        return await ctx.await_event("never-emitted")

    napping = await absurd_client.spawn("nap", {})
    waiting = await absurd_client.spawn("wait", {})
    assert await run_queued(absurd_client) == 2
    assert await run_queued(absurd_client) == 0
    for spawned in (napping, waiting):
        snap = await absurd_client.fetch_task_result(spawned["task_id"])
        assert snap is not None
        assert snap.state == "sleeping"


async def test_run_queued_counts_retries_and_respects_max_rounds(absurd_client: AsyncAbsurd) -> None:
    calls: list[int] = []

    @absurd_client.register_task(name="boom")
    async def boom(params: dict[str, int], ctx: AsyncTaskContext) -> None:
        calls.append(1)
        raise RuntimeError("boom")

    spawned = await absurd_client.spawn("boom", {}, max_attempts=3)
    assert await run_queued(absurd_client, max_rounds=1) == 1
    assert await run_queued(absurd_client) == 2
    snap = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snap is not None
    assert snap.state == "failed"
    assert len(calls) == 3


def test_queue_fixture_is_fresh_and_short(absurd_queue: str) -> None:
    assert absurd_queue.startswith("test_")
    assert len(absurd_queue.encode()) <= 57


def _raise(message: str) -> Callable[[contextlib.ExitStack], str]:
    def provider(stack: contextlib.ExitStack) -> str:
        raise RuntimeError(message)

    return provider


def test_no_database_fails_naming_the_three_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_DATABASE_ENV, raising=False)
    with contextlib.ExitStack() as stack, pytest.raises(pytest.fail.Exception) as err:
        provision_test_database(stack, embedded=_raise("no binaries"), containers=_raise("no Docker daemon answered"))
    message = str(err.value)
    assert "ABSURD_TEST_DATABASE_URL" in message
    assert "pydantic-ai-absurd[embedded]" in message
    assert "Docker" in message
    assert "no binaries" in message


def test_falls_back_to_testcontainers_provider(monkeypatch: pytest.MonkeyPatch, absurd_dsn: str) -> None:
    monkeypatch.delenv(TEST_DATABASE_ENV, raising=False)
    with contextlib.ExitStack() as stack:
        dsn = provision_test_database(stack, embedded=_raise("nope"), containers=lambda _stack: absurd_dsn)
    assert dsn == absurd_dsn


def test_env_database_is_used_and_schema_installed(monkeypatch: pytest.MonkeyPatch, absurd_dsn: str) -> None:
    with fresh_database(absurd_dsn) as dsn:
        monkeypatch.setenv(TEST_DATABASE_ENV, dsn)
        with contextlib.ExitStack() as stack:
            assert provision_test_database(stack, embedded=_raise("unused"), containers=_raise("unused")) == dsn
        assert check_schema_sync(dsn)


def test_bad_env_database_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_DATABASE_ENV, "postgresql://postgres@127.0.0.1:1/absurd")
    with contextlib.ExitStack() as stack, pytest.raises(pytest.fail.Exception) as err:
        provision_test_database(stack)
    assert "ABSURD_TEST_DATABASE_URL: Cannot reach Postgres" in str(err.value)


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("pydantic_ai_absurd")
