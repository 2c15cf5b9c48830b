"""Sub-agents as durable child tasks: `AbsurdAgent.register_task` and `AbsurdAgent.run_as_child`.

A layer: `AbsurdAgent` (core) asks `_extensions.LAYERS.children` for these functions.

- `register_task` (`_task`): the Absurd task that runs an agent from a child request; a child whose parent
  was cancelled or failed for good cancels itself before it runs.
- `run_as_child` inside a durable run (`_durable`): spawn once per call site, wait suspended for the end
  event the child's end emits on the parent's queue (a trigger, `_links`), checkpoint the end in the parent.
- `run_as_child` elsewhere (a script, a web handler): spawn, then poll the child's result.
- `cancel_descendants` (`_links`): the eager cascade of this package's cancel paths; triggers also cancel
  the unfinished children of a parent that is cancelled (even by SQL) or fails for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, UserContent

from .. import _absurd
from .._agent import AbsurdAgent, ChildRunResult
from .._execution import current_task_context
from ..errors import ChildTaskCancelledError, ChildTaskFailedError
from ._codec import ChildEnd, ChildRequest, decode_output, output_adapter
from ._durable import EVENT_PREFIX, ChildCall, run_durable_child
from ._links import ChildLink, cancel_descendants, install_triggers, read_children, read_parent
from ._task import register_child_task, registration_of

__all__ = [
    "EVENT_PREFIX",
    "ChildLink",
    "ChildRunResult",
    "cancel_descendants",
    "install_triggers",
    "read_children",
    "read_parent",
    "register_child_task",
    "run_child",
]

POLL_INTERVAL_MAX = 1.0
"""Seconds between two polls of a child's result at most, outside a durable run."""


async def run_child(
    agent: AbsurdAgent[Any, Any],
    user_prompt: str | Sequence[UserContent] | None,
    *,
    message_history: Sequence[ModelMessage] | None,
    metadata: dict[str, Any] | None,
    queue: str | None,
    max_attempts: int | None,
) -> ChildRunResult[Any]:
    """`AbsurdAgent.run_as_child`: run `agent` as a child task and return its result (see the module docstring)."""
    call = _call(agent, ChildRequest.of(user_prompt, message_history, metadata), queue, max_attempts)
    task_ctx = current_task_context()
    if task_ctx is not None:
        end = await run_durable_child(task_ctx, call)
    else:
        end = await _spawn_and_poll(agent, call)
    return _result(agent, call.task_name, end)


def _call(
    agent: AbsurdAgent[Any, Any], request: ChildRequest, queue: str | None, max_attempts: int | None
) -> ChildCall:
    registered = registration_of(agent)
    task_name = registered[0] if registered is not None else agent.durability.name
    absurd = agent.absurd
    target = queue or (registered[1] if registered is not None else None)
    if target is None and absurd is not None:
        target = _absurd.registered_queue(absurd, task_name) or _absurd.client_queue_name(absurd)
    if target is None:
        raise UserError(
            "`run_as_child` needs the child's queue: pass `queue=`, or build the agent with its Absurd client."
        )
    return ChildCall(task_name, target, request, max_attempts, absurd)


async def _spawn_and_poll(agent: AbsurdAgent[Any, Any], call: ChildCall) -> ChildEnd:
    absurd = agent.absurd
    if absurd is None:
        raise UserError("`run_as_child` outside a task needs the agent's Absurd client: `AbsurdAgent(agent, absurd)`.")
    spawned = await absurd.spawn(
        call.task_name, call.request.params(None), queue=call.queue, max_attempts=call.max_attempts
    )
    task_id = str(spawned["task_id"])
    delay = 0.02
    while True:
        snapshot = await absurd.fetch_task_result(task_id, queue_name=call.queue)
        if snapshot is None:
            return ChildEnd(task_id, "missing", failure="the child task no longer exists")
        if snapshot.state in _absurd.TERMINAL_TASK_STATES:
            return ChildEnd.of_task(task_id, snapshot.state, snapshot.result, snapshot.failure)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, POLL_INTERVAL_MAX)


def _result(agent: AbsurdAgent[Any, Any], task_name: str, end: ChildEnd) -> ChildRunResult[Any]:
    if end.state == "completed" and end.result is not None:
        output = decode_output(output_adapter(agent.output_type), end.result.get("output"))
        return ChildRunResult(output=output, usage=end.usage(), task_id=end.task_id, messages=end.messages())
    if end.state == "cancelled":
        raise ChildTaskCancelledError(
            f"Child task {task_name!r} ({end.task_id}) was cancelled before it finished.",
            task_id=end.task_id,
            task_name=task_name,
        )
    raise ChildTaskFailedError(
        f"Child task {task_name!r} ({end.task_id}) failed for good: {end.failure or end.state}",
        task_id=end.task_id,
        task_name=task_name,
        failure=end.failure,
    )
