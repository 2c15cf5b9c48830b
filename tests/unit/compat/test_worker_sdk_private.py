"""Pin the private `absurd_sdk` names `_sdk_private.py` relies on: fails loudly when upstream changes them."""

from __future__ import annotations

import inspect

import psycopg
from absurd_sdk import AsyncAbsurd, SpawnOptions

from pydantic_ai_absurd._absurd import (
    client_conninfo,
    client_hooks,
    client_queue_name,
    execute_claimed_task,
    is_registered,
    registered_queue,
    registered_task_names,
    spawn_options,
)


def test_private_names_exist_with_the_expected_shapes() -> None:
    client = AsyncAbsurd("postgresql://u:secret@example.invalid/db", queue_name="q1", hooks={})
    assert isinstance(client._registry, dict)  # pyright: ignore[reportPrivateUsage]
    assert client._hooks == {}  # pyright: ignore[reportPrivateUsage]
    assert client._queue_name == "q1"  # pyright: ignore[reportPrivateUsage]
    assert client._conn_string == "postgresql://u:secret@example.invalid/db"  # pyright: ignore[reportPrivateUsage]
    assert client._conn is None  # pyright: ignore[reportPrivateUsage]
    execute = AsyncAbsurd._execute_task  # pyright: ignore[reportPrivateUsage]
    assert inspect.iscoroutinefunction(execute)
    assert list(inspect.signature(execute).parameters) == ["self", "task", "claim_timeout"]

    @client.register_task(name="t")
    async def t(params: object, ctx: object) -> None:
        return None

    entry = client._registry["t"]  # pyright: ignore[reportPrivateUsage]
    assert entry["handler"] is t
    assert entry["queue"] == "q1"
    assert is_registered(client, "t")
    assert not is_registered(client, "other")
    assert registered_task_names(client) == ["t"]
    assert registered_queue(client, "t") == "q1"
    assert registered_queue(client, "other") is None
    assert client_hooks(client) == {}
    assert client_queue_name(client) == "q1"
    assert client_conninfo(client) == "postgresql://u:secret@example.invalid/db"


async def test_conninfo_from_a_connection_keeps_the_password(absurd_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        client = AsyncAbsurd(conn, queue_name="q1")
        conninfo = client_conninfo(client)
        assert conninfo is not None
        async with await psycopg.AsyncConnection.connect(conninfo) as again:
            assert again.info.dbname == conn.info.dbname


async def test_execute_claimed_task_runs_on_the_given_connection(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    seen: list[object] = []

    @absurd_client.register_task(name="t")
    async def t(params: int, ctx: object) -> int:
        seen.append(ctx._conn)  # type: ignore[attr-defined]  # pyright: ignore
        return params + 1

    spawned = await absurd_client.spawn("t", 41)
    [claimed] = await absurd_client.claim_tasks(claim_timeout=30)
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await execute_claimed_task(absurd_client, conn, claimed, 30, {})
        assert seen == [conn]
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None
    assert snapshot.result == 42


async def test_spawn_options_are_what_spawn_sends_after_its_hook_and_defaults() -> None:
    def before_spawn(task_name: str, params: object, options: SpawnOptions) -> SpawnOptions:
        return {**options, "headers": {"from": task_name}, "idempotency_key": "changed"}

    client = AsyncAbsurd("postgresql://", queue_name="q1", default_max_attempts=7, hooks={"before_spawn": before_spawn})
    client.register_task(name="t", default_max_attempts=3, default_cancellation={"max_delay": 60})(_noop)
    client.register_task(name="u")(_noop)
    prepare = AsyncAbsurd._prepare_spawn  # pyright: ignore[reportPrivateUsage]
    assert list(inspect.signature(prepare).parameters)[:2] == ["self", "task_name"]
    assert await spawn_options(client, "t", {}, queue="q1", idempotency_key="k") == {
        "headers": {"from": "t"},
        "max_attempts": 3,
        "cancellation": {"max_delay": 60},
        "idempotency_key": "k",  # the caller's key wins over the hook's
    }
    assert (await spawn_options(client, "u", {}, queue="q1", idempotency_key="k", max_attempts=1))["max_attempts"] == 1
    assert (await spawn_options(client, "u", {}, queue="q1", idempotency_key="k"))["max_attempts"] == 7


async def _noop(params: object, ctx: object) -> None:
    return None
