"""What crosses between a parent and its child task: the request (task params) and the child's result.

The params are plain JSON (`prompt`, `message_history`, `metadata`, `parent`) unless they hold text Postgres
cannot store (NUL, lone surrogates): then they, like the child's result always, travel in this package's
checkpoint envelope (`{"json": "<text>"}`), so any text a model or a user produced round-trips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import TypeAdapter
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, UserContent
from pydantic_ai.output import NativeOutput, PromptedOutput, TextOutput, ToolOutput
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import RunUsage
from pydantic_core import to_jsonable_python

from .._checkpoint import Checkpoint, from_jsonb, json_text, jsonb_param

__all__ = ["ChildEnd", "ChildRequest", "ParentLink", "decode_output", "encode_result", "output_adapter"]

_REQUEST_KEY = "run_as_child"
"""Marks the params of a child task (beside `prompt`, `message_history`, `metadata` and `parent`)."""
_PROMPT_ADAPTER: TypeAdapter[Sequence[UserContent]] = TypeAdapter(Sequence[UserContent])
_USAGE_ADAPTER: TypeAdapter[RunUsage] = TypeAdapter(RunUsage)


@dataclass(frozen=True)
class ParentLink:
    """The task that spawned a child: its queue and id."""

    queue: str
    task_id: str


@dataclass(frozen=True)
class ChildRequest:
    """What a child run is asked: prompt, message history and metadata, in their JSON form."""

    prompt: Any
    history: Any
    metadata: Any

    @classmethod
    def of(
        cls,
        user_prompt: str | Sequence[UserContent] | None,
        message_history: Sequence[ModelMessage] | None,
        metadata: dict[str, Any] | None,
    ) -> ChildRequest:
        """The JSON form of a `run_as_child` call's arguments."""
        prompt = user_prompt if user_prompt is None or isinstance(user_prompt, str) else _dump_prompt(user_prompt)
        history = (
            None
            if message_history is None
            else ModelMessagesTypeAdapter.dump_python(list(message_history), mode="json")
        )
        try:
            json_text(metadata)
        except (TypeError, ValueError) as error:
            raise UserError(f"`run_as_child(metadata=...)` must be JSON data: {error}") from error
        return cls(prompt, history, metadata)

    def key(self, task_name: str) -> str:
        """A digest of the request and the task it goes to: a re-run of the call must ask the same."""
        text = json_text([task_name, self.prompt, self.history, self.metadata])
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def params(self, parent: ParentLink | None) -> dict[str, Any]:
        """The child task's params: readable JSON, or its envelope when Postgres cannot store the text it holds."""
        link = None if parent is None else {"queue": parent.queue, "task_id": parent.task_id}
        payload = {
            _REQUEST_KEY: 1,
            "prompt": self.prompt,
            "message_history": self.history,
            "metadata": self.metadata,
            "parent": link,
        }
        return json.loads(jsonb_param(payload))

    @classmethod
    def from_params(cls, params: Any) -> tuple[ChildRequest, ParentLink | None]:
        """Read the params `params` wrote."""
        payload = from_jsonb(params)
        if not isinstance(payload, dict) or _REQUEST_KEY not in payload:
            raise UserError("This task was not spawned by `run_as_child` (its params lack the child request).")
        request = cast(dict[str, Any], payload)
        link = request.get("parent")
        parent = (
            ParentLink(str(link["queue"]), str(link["task_id"]))  # pyright: ignore[reportUnknownArgumentType]
            if isinstance(link, dict)
            else None
        )
        return cls(request.get("prompt"), request.get("message_history"), request.get("metadata")), parent

    def user_prompt(self) -> str | Sequence[UserContent] | None:
        """The prompt to run the child agent with."""
        if self.prompt is None or isinstance(self.prompt, str):
            return self.prompt
        return _PROMPT_ADAPTER.validate_python(self.prompt)

    def message_history(self) -> list[ModelMessage] | None:
        """The message history to run the child agent with."""
        return None if self.history is None else ModelMessagesTypeAdapter.validate_python(self.history)


def _dump_prompt(prompt: Sequence[UserContent]) -> Any:
    return _PROMPT_ADAPTER.dump_python(list(prompt), mode="json")


def encode_result(result: AgentRunResult[Any]) -> dict[str, str]:
    """The child task's result: output, usage and new messages (JSON), in the checkpoint envelope."""
    payload = {
        "output": to_jsonable_python(result.output),
        "usage": _USAGE_ADAPTER.dump_python(result.usage, mode="json"),
        "messages": ModelMessagesTypeAdapter.dump_python(result.new_messages(), mode="json"),
    }
    return Checkpoint.of(payload).stored()


@dataclass(frozen=True)
class ChildEnd:
    """How a child task ended, as its parent records it: state, and result or failure."""

    task_id: str
    state: str
    result: dict[str, Any] | None = None
    failure: str | None = None
    request_key: str | None = None
    """The digest of what the call asked (`ChildRequest.key`)."""

    def to_json(self) -> dict[str, Any]:
        """The parent's checkpoint of this end."""
        return {
            "task_id": self.task_id,
            "state": self.state,
            "result": self.result,
            "failure": self.failure,
            "request_key": self.request_key,
        }

    @classmethod
    def from_json(cls, value: Any) -> ChildEnd:
        """Read `to_json`'s form back."""
        entries = cast(dict[str, Any], value)
        return cls(
            str(entries["task_id"]),
            str(entries["state"]),
            entries.get("result"),
            entries.get("failure"),
            entries.get("request_key"),
        )

    @classmethod
    def of_task(cls, task_id: str, state: str, result: Any, failure: Any) -> ChildEnd:
        """The end of a task from `absurd.get_task_result` (`result` is the child's envelope)."""
        decoded = Checkpoint.read(result).value if state == "completed" else None
        return cls(task_id, state, cast(dict[str, Any] | None, decoded), failure_text(failure))

    def usage(self) -> RunUsage:
        """The child run's usage (empty when it did not complete)."""
        usage = None if self.result is None else self.result.get("usage")
        return RunUsage() if usage is None else _USAGE_ADAPTER.validate_python(usage)

    def messages(self) -> list[ModelMessage]:
        """The child run's new messages."""
        messages = None if self.result is None else self.result.get("messages")
        return [] if messages is None else ModelMessagesTypeAdapter.validate_python(messages)


def failure_text(failure: object) -> str | None:
    """Absurd's `failure_reason` (`{"name", "message", ...}`) as one line."""
    if failure is None:
        return None
    if isinstance(failure, dict):
        entries = cast(dict[str, Any], failure)
        name, message = entries.get("name"), entries.get("message")
        if message is not None:
            text = f"{name}: {message}" if name else str(message)
            return " ".join(text.split())
    text = str(failure)  # pyright: ignore[reportUnknownArgumentType]
    return " ".join(text.split())


def _output_types(spec: Any) -> list[Any] | None:
    """The Python types a child agent's `output_type` produces, or None when one of them is not a plain type."""
    if isinstance(spec, ToolOutput):
        return _output_types(cast(Any, spec).output)
    if isinstance(spec, NativeOutput | PromptedOutput):
        return _output_types(cast(Any, spec).outputs)
    if isinstance(spec, TextOutput):
        return [str]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        found: list[Any] = []
        for item in cast(Sequence[Any], spec):
            types = _output_types(item)
            if types is None:
                return None
            found += types
        return found
    if isinstance(spec, type) or getattr(spec, "__origin__", None) is not None:
        return [spec]
    return None


def output_adapter(spec: Any) -> TypeAdapter[Any] | None:
    """A validator for the JSON of the child's output, typed by its `output_type` (None: keep the JSON as is)."""
    types = _output_types(spec)
    if not types:
        return None
    union: Any = types[0]
    for item in types[1:]:
        union = union | item
    try:
        return TypeAdapter(union)
    except Exception:  # an output type pydantic cannot validate from JSON: the JSON is returned as is
        return None


def decode_output(adapter: TypeAdapter[Any] | None, output: Any) -> Any:
    """The child's output, validated into its type."""
    return output if adapter is None else adapter.validate_python(output)
