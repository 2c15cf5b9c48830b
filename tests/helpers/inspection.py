"""A billing agent for the inspection and OpenTelemetry tests: a model request, a tool call, a final answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.agents import SimulatedCrash


def billing_model() -> FunctionModel:
    """Turn 0 calls `charge(amount=3)` (tool call id `call_1`), turn 1 answers with the receipt."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for message in messages if message.kind == "response")
        if turn == 0:
            return ModelResponse(parts=[ToolCallPart("charge", {"amount": 3}, tool_call_id="call_1")])
        returns = [part.content for m in messages for part in m.parts if part.part_kind == "tool-return"]
        return ModelResponse(parts=[TextPart(f"charged: {returns[-1]}")])

    return FunctionModel(respond, model_name="scripted")


def billing_agent(
    *,
    crash_first: bool = False,
    charges: Path | None = None,
    before_charge: Callable[[], None] | None = None,
    instrument: InstrumentationSettings | bool = False,
) -> AbsurdAgent[None, str]:
    """The `support` agent. `crash_first`: the first `charge` raises `SimulatedCrash` (the run fails, a retry
    replays the model request); `charges`: a file that gets one line per executed charge."""
    inner = Agent(billing_model(), name="support")
    if instrument:
        inner.instrument = instrument
    crashed: list[bool] = []

    @inner.tool_plain
    def charge(amount: int) -> dict[str, Any]:
        if before_charge is not None:
            before_charge()
        if crash_first and not crashed:
            crashed.append(True)
            raise SimulatedCrash("worker died while charging")
        if charges is not None:
            with charges.open("a") as file:
                file.write(f"{amount}\n")
        return {"receipt": f"r-{amount}"}

    return AbsurdAgent(inner)


def register_billing(absurd: AsyncAbsurd, agent: AbsurdAgent[None, str], *, runs: int = 1) -> None:
    """Register task `billing`: `runs` runs of `agent` in one task (the second one is `support~2`)."""

    @absurd.register_task(name="billing")
    async def billing(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        outputs = [(await agent.run(str(params["prompt"]))).output for _ in range(runs)]
        return {"outputs": outputs}
