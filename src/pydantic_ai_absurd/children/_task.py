"""`AbsurdAgent.register_task`: the Absurd task that runs an agent as a child of another task."""

from __future__ import annotations

import weakref
from typing import Any

from absurd_sdk import AsyncTaskContext, CancelledTask
from pydantic_ai.exceptions import UserError

from .. import _absurd
from .._agent import AbsurdAgent
from ._codec import ChildRequest, ParentLink, encode_result

__all__ = ["Registration", "register_child_task", "registration_of"]


Registration = tuple[str, str | None]
"""`(task name, queue)` an agent was registered under in this process."""

_registrations: weakref.WeakKeyDictionary[AbsurdAgent[Any, Any], Registration] = weakref.WeakKeyDictionary()


def registration_of(agent: AbsurdAgent[Any, Any]) -> Registration | None:
    """The task name and queue `agent.register_task` registered, if it was called in this process."""
    return _registrations.get(agent)


def register_child_task(agent: AbsurdAgent[Any, Any], name: str | None, queue: str | None) -> str:
    """Register the task that runs `agent` on `agent.absurd`; returns the task name."""
    absurd = agent.absurd
    if absurd is None:
        raise UserError("`register_task` needs the agent's Absurd client: `AbsurdAgent(agent, absurd)`.")
    task_name = name or agent.durability.name

    async def run_child(params: Any, ctx: AsyncTaskContext) -> Any:
        request, parent = ChildRequest.from_params(params)
        if parent is not None:
            await _stop_if_parent_ended(ctx, parent)
        result = await agent.run(
            request.user_prompt(), message_history=request.message_history(), metadata=request.metadata
        )
        return encode_result(result)

    run_child.__name__ = run_child.__qualname__ = f"child_task_{task_name}"
    absurd.register_task(task_name, queue=queue)(run_child)
    _registrations[agent] = (task_name, queue)
    return task_name


async def _stop_if_parent_ended(ctx: AsyncTaskContext, parent: ParentLink) -> None:
    """Cancel this child when its parent was cancelled or failed for good (it may have been spawned as that happened)."""
    conn = _absurd.task_connection(ctx)
    end = await _absurd.task_end(conn, parent.queue, parent.task_id)
    if end is not None and end[0] in ("cancelled", "failed"):
        queue, _ = _absurd.task_identity(ctx)
        await _absurd.cancel_task_sql(conn, queue, str(ctx.task_id))
        raise CancelledTask()
