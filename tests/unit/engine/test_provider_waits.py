"""Provider rate limits: a model step waits for the provider's retry-after instead of failing the run.

The model is Pydantic AI's OpenAI chat model talking to a local OpenAI-compatible stub that answers the first
requests with HTTP 429 and a `retry-after-ms` header, as OpenAI does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent

from pydantic_ai_absurd import AbsurdAgent, inspect_task
from pydantic_ai_absurd._absurd import read_runs
from pydantic_ai_absurd.inspection._render import render_timeline  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import run_to_end
from tests.helpers.sql import checkpoint_names, client_on_fake_clock


@dataclass
class RateLimitedProvider:
    """An OpenAI-compatible chat endpoint that refuses its first `refusals` requests with 429 + retry-after."""

    refusals: int
    retry_after_ms: int
    requests: list[str] = field(default_factory=list[str])
    url: str = ""


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "answered"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[RateLimitedProvider]:
    refusals, retry_after_ms = request.param
    state = RateLimitedProvider(refusals=refusals, retry_after_ms=retry_after_ms)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            state.requests.append(self.path)
            refused = len(state.requests) <= state.refusals
            body = (
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
                if refused
                else _completion()
            )
            payload = json.dumps(body).encode()
            self.send_response(429 if refused else 200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            if refused:
                self.send_header("retry-after-ms", str(state.retry_after_ms))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval: `shutdown()` waits for the serving loop's next poll (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def openai_agent(provider: RateLimitedProvider, **options: Any) -> AbsurdAgent[None, str]:
    # Imported here: half a second, for the test process that runs these tests only (not at collection).
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(base_url=provider.url, api_key="test-key", max_retries=0)  # the SDK's own retries off
    model = OpenAIChatModel("stub", provider=OpenAIProvider(openai_client=client))
    return AbsurdAgent(Agent(model, name="caller"), **options)


async def attempts(dsn: str, queue: str, task_id: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return [int(run["attempt"]) for run in await read_runs(conn, queue, task_id)]


@pytest.mark.parametrize("provider", [(2, 200)], indirect=True)
async def test_a_short_retry_after_is_waited_in_the_worker(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, provider: RateLimitedProvider
) -> None:
    agent = openai_agent(provider)

    @absurd_client.register_task(name="caller")
    async def caller(params: Any, ctx: Any) -> str:
        return (await agent.run("hello")).output

    spawned = await absurd_client.spawn("caller", {}, max_attempts=1)
    await absurd_client.work_batch(claim_timeout=30, batch_size=1)  # one execution, no suspension
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None and (snapshot.state, snapshot.result) == ("completed", "answered")
    assert len(provider.requests) == 3
    task_id = str(spawned["task_id"])
    assert await attempts(absurd_dsn, absurd_queue, task_id) == [1]  # no attempt used by the rate limit
    assert await checkpoint_names(absurd_dsn, absurd_queue, task_id) == [
        "caller__model.request.provider_wait",
        "caller__model.request",
    ]


@pytest.mark.parametrize("provider", [(1, 1000)], indirect=True)
async def test_a_long_retry_after_suspends_the_task(
    absurd_dsn: str, absurd_queue: str, provider: RateLimitedProvider
) -> None:
    agent = openai_agent(provider, suspend_threshold=0.5)
    async with client_on_fake_clock(absurd_dsn, absurd_queue) as (client, clock):

        @client.register_task(name="caller")
        async def caller(params: Any, ctx: Any) -> str:
            return (await agent.run("hello")).output

        spawned = await client.spawn("caller", {}, max_attempts=1)
        await client.work_batch(claim_timeout=30, batch_size=1)
        waiting = await client.fetch_task_result(spawned["task_id"])
        assert waiting is not None and waiting.state == "sleeping"  # in Postgres, holding no worker slot
        timeline = await inspect_task(client, spawned["task_id"])
        assert [attempt.ended for attempt in timeline.attempts] == ["provider_wait"]
        assert [step.kind for step in timeline.steps] == ["provider_wait"]
        assert "waiting for the provider" in render_timeline(timeline)
        await client.work_batch(claim_timeout=30, batch_size=1)
        assert len(provider.requests) == 1  # still asleep: the retry-after (1 s) has not passed
        await clock.advance(timedelta(seconds=1.5))
        snapshot = await run_to_end(client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "answered")
    assert len(provider.requests) == 2
    assert await attempts(absurd_dsn, absurd_queue, str(spawned["task_id"])) == [1]


@pytest.mark.parametrize("provider", [(5, 400)], indirect=True)
async def test_past_the_cap_the_rate_limit_fails_the_run_as_before(
    absurd_client: AsyncAbsurd, provider: RateLimitedProvider
) -> None:
    agent = openai_agent(provider, max_provider_wait=0.7)

    @absurd_client.register_task(name="caller")
    async def caller(params: Any, ctx: Any) -> str:
        return (await agent.run("hello")).output

    spawned = await absurd_client.spawn("caller", {}, max_attempts=1)
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    assert snapshot.failure is not None and "429" in str(snapshot.failure["message"])
    assert len(provider.requests) == 2  # waited 0.4 s once; the next wait would pass 0.7 s in all
