"""`event_stream_response`: the log as Server-Sent Events in the Vercel AI and AG-UI protocols, resumable by id."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import httpx
import pytest
from absurd_sdk import AsyncAbsurd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pydantic_ai_absurd import event_stream_response
from pydantic_ai_absurd.client import TaskNotFoundError
from pydantic_ai_absurd.errors import EventLogError
from pydantic_ai_absurd.events import sse_events
from tests.helpers.agents import run_until_done
from tests.helpers.events import answer_words, collect, streaming_agent


def app_for(absurd: AsyncAbsurd, protocol: str) -> Starlette:
    async def events(request: Request) -> Response:
        return event_stream_response(
            absurd,
            request.path_params["task_id"],
            protocol=protocol,  # type: ignore[arg-type]
            last_event_id=request.headers.get("last-event-id"),
        )

    return Starlette(routes=[Route("/tasks/{task_id}/events", events)])


async def finished_task(absurd: AsyncAbsurd) -> str:
    agent, _ = streaming_agent(absurd, words=4)

    @absurd.register_task(name="chat")
    async def chat(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"output": (await agent.run("hi")).output}

    spawned = await absurd.spawn("chat", {})
    task_id = str(spawned["task_id"])
    assert (await run_until_done(absurd, task_id)).state == "completed"
    return task_id


async def get(app: Starlette, task_id: str, last_event_id: str | None = None) -> httpx.Response:
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.get(f"/tasks/{task_id}/events", headers=headers)


def messages(body: str) -> list[str]:
    return [m for m in body.split("\n\n") if m]


def data_of(body: str) -> list[Any]:
    data = [m.split("\n", 1)[1].removeprefix("data: ") for m in messages(body)]
    return [json.loads(d) for d in data if d != "[DONE]"]


def event_id(message: str) -> str:
    lines = message.split("\n")
    assert lines[0].startswith("id: ") and len(lines) == 2 and lines[1].startswith("data: "), message
    return lines[0].removeprefix("id: ")


@pytest.mark.parametrize("protocol", ["vercel-ai", "ag-ui"])
async def test_every_last_event_id_continues_exactly(absurd_client: AsyncAbsurd, protocol: str) -> None:
    task_id = await finished_task(absurd_client)
    app = app_for(absurd_client, protocol)
    response = await get(app, task_id)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = messages(response.text)
    ids = [event_id(m) for m in sent]  # every SSE event carries its own id, with its data
    positions = [tuple(int(part) for part in i.split(".")) for i in ids]
    assert positions == sorted(set(positions))  # increasing: `seq.index` of the log event that produced it
    log = await collect(absurd_client, task_id)
    assert {p[0] for p in positions} - {0} <= {e.seq for e in log}
    for i, last in enumerate(ids[:-1]):
        resumed = await get(app, task_id, last)
        assert resumed.status_code == 200
        # What the client had, then what the reconnect sends: the whole stream, nothing twice, nothing lost.
        assert "".join(m + "\n\n" for m in sent[: i + 1]) + resumed.text == response.text, last
    seq = positions[len(positions) // 2][0]
    whole = await get(app, task_id, str(seq))  # a plain `seq`: after all of its chunks
    assert whole.text == "".join(m + "\n\n" for m, p in zip(sent, positions, strict=True) if p[0] > seq)
    done = await get(app, task_id, ids[-1])
    assert done.status_code == 204  # an EventSource stops reconnecting


async def test_vercel_ai_chunks_come_from_pydantic_ai(absurd_client: AsyncAbsurd) -> None:
    task_id = await finished_task(absurd_client)
    response = await get(app_for(absurd_client, "vercel-ai"), task_id)
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    chunks = data_of(response.text)
    types = [c["type"] for c in chunks]
    assert types[:2] == ["start", "data-absurd-status"] and chunks[1]["data"]["event_kind"] == "run_started"
    assert chunks[0]["messageId"] == task_id
    assert "tool-input-available" in types and "tool-output-available" in types
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    assert text == "".join(answer_words(4))
    assert types[-3:] == ["data-absurd-status", "finish-step", "finish"]
    assert chunks[-3]["data"]["event_kind"] == "run_finished"
    assert response.text.endswith(f"id: {chunks[-3]['data']['seq']}.3\ndata: [DONE]\n\n")


async def test_ag_ui_events_come_from_pydantic_ai(absurd_client: AsyncAbsurd) -> None:
    task_id = await finished_task(absurd_client)
    chunks = data_of((await get(app_for(absurd_client, "ag-ui"), task_id)).text)
    types = [c["type"] for c in chunks]
    assert "RUN_STARTED" in types and "TEXT_MESSAGE_CONTENT" in types and "TOOL_CALL_RESULT" in types
    assert [c["value"]["event_kind"] for c in chunks if c["type"] == "CUSTOM"] == ["run_started", "run_finished"]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert all(c["threadId"] == task_id for c in chunks if c["type"] == "RUN_STARTED")


async def test_an_unknown_task_is_an_error_not_a_hang(absurd_client: AsyncAbsurd) -> None:
    async with asyncio.timeout(60):  # a guard against a hang, not a timed assertion
        with pytest.raises(TaskNotFoundError):
            await anext(sse_events(absurd_client, str(uuid.uuid4())))


async def test_bad_arguments_are_one_line_errors(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(EventLogError, match="Unknown protocol"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000", protocol="x")  # type: ignore[arg-type]
    with pytest.raises(EventLogError, match="not an event sequence number"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000", last_event_id="-1")
    with pytest.raises(EventLogError, match="not an SSE event id"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000", last_event_id="3.x")


@pytest.mark.parametrize("missing", ["starlette.responses", "pydantic_ai.ui.vercel_ai"])
async def test_without_the_web_extra_the_error_names_it(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import` of a None entry raises ImportError
    with pytest.raises(EventLogError, match=r"needs the `web` extra: pip install 'pydantic-ai-absurd\[web\]'"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000")
