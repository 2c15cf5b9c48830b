"""`event_stream_response`: the log as Server-Sent Events in the Vercel AI and AG-UI protocols, resumable by id."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from absurd_sdk import AsyncAbsurd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pydantic_ai_absurd import event_stream_response
from pydantic_ai_absurd.errors import EventLogError

from .events_support import answer_words, collect, streaming_agent
from .support import run_until_done


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
    return [
        json.loads(m.removeprefix("data: ")) for m in messages(body) if m.startswith("data: ") and m != "data: [DONE]"
    ]


@pytest.mark.parametrize("protocol", ["vercel-ai", "ag-ui"])
async def test_every_last_event_id_continues_exactly(absurd_client: AsyncAbsurd, protocol: str) -> None:
    task_id = await finished_task(absurd_client)
    app = app_for(absurd_client, protocol)
    response = await get(app, task_id)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.text
    ids = [int(m.removeprefix("id: ")) for m in messages(body) if m.startswith("id: ")]
    log = await collect(absurd_client, task_id)
    assert ids == [e.seq for e in log]  # one id per event, in order, the last one after the closing chunks
    for seq in ids[:-1]:
        marker = f"id: {seq}\n\n"
        expected = body[body.index(marker) + len(marker) :]
        resumed = await get(app, task_id, str(seq))
        assert resumed.text == expected, seq
    done = await get(app, task_id, str(ids[-1]))
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
    assert response.text.endswith(f"data: [DONE]\n\nid: {chunks[-3]['data']['seq']}\n\n")


async def test_ag_ui_events_come_from_pydantic_ai(absurd_client: AsyncAbsurd) -> None:
    task_id = await finished_task(absurd_client)
    chunks = data_of((await get(app_for(absurd_client, "ag-ui"), task_id)).text)
    types = [c["type"] for c in chunks]
    assert "RUN_STARTED" in types and "TEXT_MESSAGE_CONTENT" in types and "TOOL_CALL_RESULT" in types
    assert [c["value"]["event_kind"] for c in chunks if c["type"] == "CUSTOM"] == ["run_started", "run_finished"]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert all(c["threadId"] == task_id for c in chunks if c["type"] == "RUN_STARTED")


async def test_bad_arguments_are_one_line_errors(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(EventLogError, match="Unknown protocol"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000", protocol="x")  # type: ignore[arg-type]
    with pytest.raises(EventLogError, match="not an event sequence number"):
        event_stream_response(absurd_client, "0190a0a0-0000-7000-8000-000000000000", last_event_id="-1")
