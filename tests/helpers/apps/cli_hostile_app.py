"""An agent whose tool arguments and results carry terminal control sequences, for the CLI output tests.

Loadable as a CLI target (`tests.helpers.apps.cli_hostile_app:absurd`, settings from `HOSTILE_DSN`/`HOSTILE_QUEUE`/
`HOSTILE_VARIANT`). Task `hostile`: the model calls `lookup(q=PAYLOAD)`, whose result holds PAYLOAD too,
and `delete(path=PAYLOAD)`, which needs approval, so the task waits in the inbox. Variant `broken` raises
an error whose message is PAYLOAD (what `verify` reports).
"""

from __future__ import annotations

import os
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ModelMessage, ModelResponsePart, TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, Inbox
from tests.helpers.agents import Script

PAYLOAD = "red\x1b[31m title\x1b]0;pwned\x07 cr\r erase\x1b[2K [bold]markup[/bold] end"
"""Recolours the terminal, sets its title, returns the carriage and erases the line, unless escaped."""

RAW = ("\x1b", "\x07", "\r")


def _first(_: list[ModelMessage]) -> list[ModelResponsePart]:
    return [
        ToolCallPart("lookup", {"q": PAYLOAD}, tool_call_id="c1"),
        ToolCallPart("delete", {"path": PAYLOAD}, tool_call_id="c2"),
    ]


def _answer(_: list[ModelMessage]) -> list[ModelResponsePart]:
    return [TextPart("done " + PAYLOAD)]


def build(dsn: str, queue: str, *, variant: str = "same") -> AsyncAbsurd:
    """The client with task `hostile` registered."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    inbox = Inbox(absurd)

    async def lookup(q: str) -> str:
        return "found " + q

    async def delete(path: str) -> str:
        return "deleted " + path

    agent = AbsurdAgent(
        Agent(
            Script(turns=[_first, _answer]).model(),
            name="hostile",
            tools=[Tool(lookup), Tool(delete, requires_approval=True)],
            capabilities=[HandleDeferredToolCalls(inbox.ask, timeout=None, name="approve")],
        )
    )

    @absurd.register_task(name="hostile")
    async def hostile(params: dict[str, Any], ctx: Any) -> str:
        if variant == "broken":
            raise RuntimeError(PAYLOAD)
        return (await agent.run(str(params["prompt"]))).output

    return absurd


absurd = (
    build(os.environ["HOSTILE_DSN"], os.environ["HOSTILE_QUEUE"], variant=os.environ.get("HOSTILE_VARIANT", "same"))
    if "HOSTILE_DSN" in os.environ
    else None
)

inbox = Inbox(AsyncAbsurd("postgresql://nobody@127.0.0.1:1/unused"))
"""Not a client: a wrong `worker` target."""
