"""Scripted models, crash injection, and running queued work in the test's own process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from absurd_sdk import AsyncAbsurd, TaskResultSnapshot
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    ModelResponsePart,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from .polling import TERMINAL, wait_until


class SimulatedCrash(Exception):
    """Raised by a test to end a task run the way a dying worker would (the run fails and is retried)."""


WALL_CLOCK_FIELDS = frozenset({"timestamp", "request_timestamp", "duration"})
"""Message fields that record when something happened or how long it took: they differ between two runs."""


def prompt_bytes(messages: Sequence[ModelMessage]) -> bytes:
    """What a provider would be sent: the messages as JSON, without the wall-clock bookkeeping of two runs."""
    data = json.loads(ModelMessagesTypeAdapter.dump_json(list(messages)))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in WALL_CLOCK_FIELDS}  # pyright: ignore[reportUnknownVariableType]
        if isinstance(value, list):
            return [strip(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
        return value

    return json.dumps(strip(data)).encode()


@dataclass
class Script:
    """A scripted model: turn `n` returns `turns[n](messages)`; every call's prompt is recorded."""

    turns: list[Callable[[list[ModelMessage]], list[ModelResponsePart]]]
    prompts: list[bytes] = field(default_factory=list[bytes])
    before_call: Callable[[int], None] | None = None

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def model(self) -> FunctionModel:
        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            index = sum(1 for m in messages if m.kind == "response")
            if self.before_call is not None:
                self.before_call(index)
            self.prompts.append(prompt_bytes(messages))
            return ModelResponse(parts=self.turns[min(index, len(self.turns) - 1)](messages))

        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
            for index, part in enumerate(respond(messages, info).parts):
                if isinstance(part, TextPart):
                    yield part.content
                elif isinstance(part, ToolCallPart):
                    yield {
                        index: DeltaToolCall(
                            name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id
                        )
                    }

        return FunctionModel(respond, stream_function=stream, model_name="scripted")


def two_tools_script() -> Script:
    """Two parallel tool calls, `first` (`c1`) and `second` (`c2`), then the text `done`."""
    return Script(
        turns=[
            lambda _: [
                ToolCallPart("first", {"n": 1}, tool_call_id="c1"),
                ToolCallPart("second", {"n": 2}, tool_call_id="c2"),
            ],
            lambda _: [TextPart("done")],
        ]
    )


async def run_until_done(
    absurd: AsyncAbsurd, task_id: str, *, claim_timeout: int = 30, max_batches: int = 20
) -> TaskResultSnapshot:
    """Run queued work until the task is terminal (each failed run is retried by Absurd at once)."""
    for _ in range(max_batches):
        snapshot = await absurd.fetch_task_result(task_id)
        if snapshot is not None and snapshot.state in TERMINAL:
            return snapshot
        await absurd.work_batch(claim_timeout=claim_timeout, batch_size=4)
    snapshot = await absurd.fetch_task_result(task_id)
    assert snapshot is not None
    return snapshot


async def run_to_end(absurd: AsyncAbsurd, task_id: str, *, timeout: float = 30.0) -> TaskResultSnapshot:
    """Work the queue until the task is terminal, waiting for sleeping runs to become claimable again."""

    async def terminal() -> TaskResultSnapshot | None:
        snapshot = await absurd.fetch_task_result(task_id)
        assert snapshot is not None
        if snapshot.state in TERMINAL:
            return snapshot
        await absurd.work_batch(claim_timeout=30, batch_size=4)
        return None

    return await wait_until(terminal, timeout, message=f"task {task_id} not finished after {timeout} s")
