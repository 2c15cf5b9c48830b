"""A small app for the verify and fork tests: a billing agent with a tool, recorded up to an approval wait.

`build_app(dsn, queue, variant=...)` returns an `AsyncAbsurd` client with the task `bill` registered, and
the scripted model (its `calls` count the model requests really sent). Variants model a deploy:
`same` (unchanged code), `renamed_tool`, `new_prompt`, `new_instructions` (the billing agent's instructions
changed: the one-line summaries of the request stay the same), `swapped` (the two agent runs in the other order).
"""

from __future__ import annotations

from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponsePart, TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.agents import Script

APPROVAL_EVENT = "approve:{task_id}"


def _charge_twice(_: list[ModelMessage]) -> list[ModelResponsePart]:
    return [
        ToolCallPart("charge", {"amount": 1}, tool_call_id="c1"),
        ToolCallPart("charge", {"amount": 2}, tool_call_id="c2"),
    ]


def _reply(_: list[ModelMessage]) -> list[ModelResponsePart]:
    return [TextPart("done")]


def billing_script() -> Script:
    """Turn 1: two parallel `charge` calls; turn 2: a text answer."""
    return Script(turns=[_charge_twice, _reply])


def summary_script() -> Script:
    """One turn: a text answer."""
    return Script(turns=[_reply])


class App:
    """The client, the scripted models, and the side effects the tools had."""

    def __init__(self, absurd: AsyncAbsurd, billing: Script, summary: Script) -> None:
        self.absurd = absurd
        self.billing = billing
        self.summary = summary
        self.charges: list[int] = []

    @property
    def model_calls(self) -> int:
        """Model requests really sent, by both agents."""
        return self.billing.calls + self.summary.calls


def build_app(dsn: str, queue: str, *, variant: str = "same", wait: bool = True) -> App:
    """The app of one code version (see the module docstring)."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    app = App(absurd, billing_script(), summary_script())
    instructions = "Answer in French." if variant == "new_instructions" else "Answer in English."
    billing = Agent(app.billing.model(), name="billing", instructions=instructions)
    tool_name = "charge_card" if variant == "renamed_tool" else "charge"

    @billing.tool_plain(name=tool_name)
    async def charge(amount: int) -> str:
        app.charges.append(amount)
        return f"charged {amount}"

    summary = AbsurdAgent(Agent(app.summary.model(), name="summary"))
    durable_billing = AbsurdAgent(billing)

    @absurd.register_task(name="bill")
    async def bill(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        prompt = str(params["prompt"]) + (" (be brief)" if variant == "new_prompt" else "")
        if variant == "swapped":
            summed = await summary.run("summarise the bill")
            billed = await durable_billing.run(prompt)
        else:
            billed = await durable_billing.run(prompt)
            summed = await summary.run("summarise the bill")
        if wait:
            await ctx.await_event(APPROVAL_EVENT.format(task_id=ctx.task_id))
        return {"billed": billed.output, "summary": summed.output}

    return app
