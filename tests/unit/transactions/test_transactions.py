"""`durable_transaction()`: a tool's rows commit with its step's checkpoint, or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import AgentStreamEvent, ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, DurableTransactionError, durable_transaction
from pydantic_ai_absurd._checkpoint import Checkpoint
from pydantic_ai_absurd._pydantic_ai import is_journaled_failure
from pydantic_ai_absurd._steps import commit_hook
from tests.helpers.agents import SimulatedCrash, run_until_done
from tests.helpers.polling import wait_terminal
from tests.helpers.sql import checkpoint_names, checkpoints
from tests.helpers.transactions import STEP, Refunds, count_rows, refund_agent, refund_calls, register
from tests.helpers.workers import running_worker


async def test_rows_and_checkpoint_commit_together(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()
    register(absurd_client, refund_agent(refund_calls("a"), table, refunds))
    seen: dict[str, tuple[int, bool]] = {}

    async def before(name: str) -> None:
        if "refund" in name:
            names = await checkpoint_names(absurd_dsn, absurd_queue, task_id)
            seen["before"] = (await count_rows(absurd_dsn, table), name in names)

    async def after(name: str) -> None:
        if "refund" in name:
            names = await checkpoint_names(absurd_dsn, absurd_queue, task_id)
            seen["after"] = (await count_rows(absurd_dsn, table), name in names)

    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    with commit_hook(before, after=after):
        snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed", snapshot.failure
    # The block had exited before the commit, yet neither its row nor the checkpoint was visible.
    assert seen == {"before": (0, False), "after": (1, True)}
    assert refunds.executions == ["a"]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_crash_on_either_side_of_the_commit_writes_each_row_once(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str, when: str
) -> None:
    refunds = Refunds()
    register(absurd_client, refund_agent(refund_calls("a", "b"), table, refunds))
    crash = {STEP.format("a")}

    async def maybe_crash(name: str) -> None:
        if name in crash:
            crash.discard(name)
            raise SimulatedCrash(name)

    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    hooks = {"before": (maybe_crash, None), "after": (None, maybe_crash)}[when]
    with commit_hook(hooks[0], after=hooks[1]):
        snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"
    assert await count_rows(absurd_dsn, table) == 2
    # Before the commit: nothing of `a` was written, so the retried run refunds it again (once more).
    # (`b`, in flight when the run was torn down, may have run again too.)
    assert refunds.executions.count("a") == (2 if when == "before" else 1)


async def test_an_exception_out_of_the_block_rolls_it_back(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()
    attempts: list[str] = []

    async def refuse_first(order_id: str, conn: psycopg.AsyncConnection[Any]) -> None:
        attempts.append(order_id)
        if len(attempts) == 1:
            raise ModelRetry("the amount looks wrong, ask again")

    script = refund_calls("a")
    script.turns.insert(1, script.turns[0])  # the model asks again after the retry prompt
    register(absurd_client, refund_agent(script, table, refunds, inside=refuse_first))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert await count_rows(absurd_dsn, table) == 1
    assert refunds.executions == ["a", "a"]


async def test_model_retry_after_the_block_rolls_it_back_too(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()

    async def retry_first(order_id: str) -> None:
        if len(refunds.executions) == 1:
            raise ModelRetry("try again")

    script = refund_calls("a")
    script.turns.insert(1, script.turns[0])
    register(absurd_client, refund_agent(script, table, refunds, after=retry_first))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert await count_rows(absurd_dsn, table) == 1


async def test_a_tool_that_catches_the_error_writes_nothing_and_checkpoints_its_return(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    agent = Agent(refund_calls("a").model(), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        try:
            async with durable_transaction() as conn:
                await conn.execute(f'insert into "{table}" values (%s, %s)', (order_id, amount))  # type: ignore[arg-type]
                raise ValueError("the payment provider said no")
        except ValueError as error:
            return f"not refunded: {error}"

    register(absurd_client, AbsurdAgent(agent))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert await count_rows(absurd_dsn, table) == 0
    assert STEP.format("a") in await checkpoint_names(absurd_dsn, absurd_queue, task_id)


async def test_a_second_block_in_one_tool_step_fails_the_task_naming_the_step(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    async def second_block(order_id: str) -> None:
        async with durable_transaction():
            pass

    register(absurd_client, refund_agent(refund_calls("a"), table, Refunds(), after=second_block))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "failed"
    message = str(snapshot.failure)
    assert "opened twice in tool step" in message and STEP.format("a") in message
    assert await count_rows(absurd_dsn, table) == 0


async def test_a_nested_block_is_refused(absurd_client: AsyncAbsurd, absurd_dsn: str, table: str) -> None:
    async def nested(order_id: str, conn: psycopg.AsyncConnection[Any]) -> None:
        async with durable_transaction():
            pass

    register(absurd_client, refund_agent(refund_calls("a"), table, Refunds(), inside=nested))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "failed" and "opened twice" in str(snapshot.failure)
    assert await count_rows(absurd_dsn, table) == 0


async def test_a_block_in_a_model_step_is_refused(absurd_client: AsyncAbsurd) -> None:
    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        async with durable_transaction():
            pass
        return ModelResponse(parts=[TextPart("never")])

    agent = AbsurdAgent(Agent(FunctionModel(respond), name="billing"))
    register(absurd_client, agent)
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "failed"
    message = str(snapshot.failure)
    assert "which is not a tool call" in message and "billing__model.request" in message


async def test_a_block_in_the_event_stream_handler_is_refused(absurd_client: AsyncAbsurd) -> None:
    async def handler(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        async for _ in events:
            async with durable_transaction():
                pass

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "hello"

    agent = AbsurdAgent(Agent(FunctionModel(stream_function=stream), name="billing"), event_stream_handler=handler)
    register(absurd_client, agent)
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "failed"
    message = str(snapshot.failure)
    # The model's stream events reach the durable handler inside the model request's step, which is named.
    assert "DurableTransactionError" in message and "which is not a tool call" in message
    assert "billing__model.request" in message


async def test_outside_a_durable_run_the_block_is_an_ordinary_transaction(
    absurd_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABSURD_DATABASE_URL", absurd_dsn)
    refunds = Refunds()
    agent = refund_agent(refund_calls("a", "b"), table, refunds)
    assert (await agent.run("refund")).output == "done"
    assert await count_rows(absurd_dsn, table) == 2

    async def fail_in_block() -> None:
        async with durable_transaction() as conn:
            await conn.execute(f'insert into "{table}" values (%s, %s)', ("c", 1))  # type: ignore[arg-type]
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_in_block()
    assert await count_rows(absurd_dsn, table) == 2


async def test_outside_a_durable_run_the_agent_client_dsn_is_used(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABSURD_DATABASE_URL", raising=False)
    agent = refund_agent(refund_calls("a"), table, Refunds())
    agent = AbsurdAgent(agent.wrapped, absurd_client)
    assert (await agent.run("refund")).output == "done"
    assert await count_rows(absurd_dsn, table) == 1
    with pytest.raises(DurableTransactionError, match="ABSURD_DATABASE_URL"):
        async with durable_transaction():
            pass


async def test_the_isolation_level_is_the_one_asked_for(absurd_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSURD_DATABASE_URL", absurd_dsn)
    async with durable_transaction(isolation_level=psycopg.IsolationLevel.SERIALIZABLE) as conn:
        cursor = await conn.execute("show transaction_isolation")
        assert await cursor.fetchone() == ("serializable",)
    async with durable_transaction() as conn:  # the pooled connection was reset
        cursor = await conn.execute("show transaction_isolation")
        assert await cursor.fetchone() == ("read committed",)


async def test_journaled_tool_failures_are_recognised(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str
) -> None:
    """Pins the wire shape of Pydantic AI's journaled tool outcomes (`kind`), read by `is_journaled_failure`."""
    outcomes = iter([ModelRetry("again"), "ok"])
    agent = Agent(refund_calls("a", "b").model(), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        outcome = next(outcomes)
        if isinstance(outcome, ModelRetry):
            raise outcome
        return outcome

    register(absurd_client, AbsurdAgent(agent))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    stored = await checkpoints(absurd_dsn, absurd_queue, task_id)
    values = sorted(
        (Checkpoint.read(state).value for name, state in stored.items() if "refund" in name),
        key=is_journaled_failure,
    )
    assert [is_journaled_failure(value) for value in values] == [False, True]
    assert not is_journaled_failure("refunded")


async def test_verify_and_fork_replay_the_step_and_open_no_transaction(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    from pydantic_ai_absurd import fork_task, verify_replay

    refunds = Refunds()
    register(absurd_client, refund_agent(refund_calls("a"), table, refunds))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    names = await checkpoint_names(absurd_dsn, absurd_queue, task_id)

    report = await verify_replay(absurd_client, [task_id])
    assert report.ok, report.to_json()
    fork_id = await fork_task(absurd_client, task_id, at_step=len(names))
    assert (await run_until_done(absurd_client, fork_id)).state == "completed"
    assert refunds.executions == ["a"]  # neither ran the tool, so neither opened its transaction
    assert await count_rows(absurd_dsn, table) == 1


async def test_the_sdk_cache_knows_the_step_and_nothing_writes_it_again(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from absurd_sdk import AsyncTaskContext

    from pydantic_ai_absurd._absurd import checkpoint_state

    completed: list[str] = []
    complete_step = AsyncTaskContext.complete_step

    async def recording(self: AsyncTaskContext, handle: Any, value: Any) -> Any:
        completed.append(handle.checkpoint_name)
        return await complete_step(self, handle, value)

    monkeypatch.setattr(AsyncTaskContext, "complete_step", recording)
    agent = refund_agent(refund_calls("a"), table, Refunds())
    cached: list[object] = []

    @absurd_client.register_task(name="refund")
    async def run(params: dict[str, Any], ctx: AsyncTaskContext) -> str:
        output = (await agent.run("refund")).output
        cached.append(checkpoint_state(ctx, STEP.format("a")))
        return output

    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    stored = await checkpoints(absurd_dsn, absurd_queue, task_id)
    assert cached == [stored[STEP.format("a")]]
    assert STEP.format("a") not in completed and "billing__model.request" in completed


async def test_the_tool_decorators_of_an_absurd_agent_register_durable_tools(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    agent = AbsurdAgent(Agent(refund_calls("a").model(), name="billing"), absurd_client)

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        async with durable_transaction() as conn:
            await conn.execute(f'insert into "{table}" (order_id, amount) values (%s, %s)', (order_id, amount))  # type: ignore[arg-type]
            row = await conn.execute(f'select count(*) from "{table}" where order_id = %s', (order_id,))  # type: ignore[arg-type]
            (count,) = await row.fetchone()  # type: ignore[misc]
        return f"refunded {amount} on {order_id} (refund #{count})"

    @agent.tool_plain
    def unused() -> str:
        return "never called"

    register(absurd_client, agent)
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert STEP.format("a") in await checkpoint_names(absurd_dsn, absurd_queue, task_id)
    assert await count_rows(absurd_dsn, table) == 1
    with pytest.raises(UserError, match=r"wraps a `pydantic_ai\.Agent`"):
        AbsurdAgent(agent, name="outer").tool  # noqa: B018


async def test_a_tool_without_a_checkpoint_gets_an_ordinary_transaction_on_the_task_database(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABSURD_DATABASE_URL", raising=False)
    agent = Agent(refund_calls("a").model(), name="billing")

    @agent.tool(metadata={"absurd": False})
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        async with durable_transaction() as conn:
            await conn.execute(f'insert into "{table}" values (%s, %s)', (order_id, amount))  # type: ignore[arg-type]
        return "refunded"

    register(absurd_client, AbsurdAgent(agent))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert await count_rows(absurd_dsn, table) == 1


async def test_under_our_worker_the_block_borrows_from_the_worker_pool(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    names: list[str] = []

    async def application_name(order_id: str, conn: psycopg.AsyncConnection[object]) -> None:
        cursor = await conn.execute("select current_setting('application_name')")
        row = await cursor.fetchone()
        assert row is not None
        names.append(str(row[0]))

    register(absurd_client, refund_agent(refund_calls("a", "b"), table, Refunds(), inside=application_name))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    async with running_worker(absurd_client, worker_id="txn-pool") as worker:
        snapshot = await wait_terminal(absurd_client, task_id)
    assert snapshot.state == "completed", snapshot.failure
    assert names == [worker.application_name] * 2  # the worker's pooled connections, not a pool of their own
    assert await count_rows(absurd_dsn, table) == 2
