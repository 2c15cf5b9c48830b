"""`AbsurdAgent.register_task`: the Absurd task that runs an agent as a child of another task."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import psycopg
from absurd_sdk import AsyncTaskContext, CancelledTask
from pydantic_ai.exceptions import UserError

from .. import _absurd
from .._agent import AbsurdAgent
from ._codec import ChildRequest, ParentLink, encode_result

__all__ = ["Registration", "register_child_task", "registration_of"]


logger = logging.getLogger("pydantic_ai_absurd.children")

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
        watcher: asyncio.Task[None] | None = None
        if parent is not None:
            await _stop_if_parent_ended(ctx, parent)
            watcher = asyncio.ensure_future(_watch_parent(ctx, parent))
        try:
            result = await agent.run(
                request.user_prompt(), message_history=request.message_history(), metadata=request.metadata
            )
        finally:
            if watcher is not None:
                watcher.cancel()
        return encode_result(result)

    run_child.__name__ = run_child.__qualname__ = f"child_task_{task_name}"
    absurd.register_task(task_name, queue=queue)(run_child)
    _registrations[agent] = (task_name, queue)
    return task_name


async def _cancel_if_parent_ended(ctx: AsyncTaskContext, parent: ParentLink) -> bool:
    """Cancel this child (in Postgres) when its parent was cancelled or failed for good; return whether it did."""
    conn = _absurd.task_connection(ctx)
    end = await _absurd.task_end(conn, parent.queue, parent.task_id)
    if end is None or end[0] not in ("cancelled", "failed"):
        return False
    queue, _ = _absurd.task_identity(ctx)
    await _absurd.cancel_task_sql(conn, queue, str(ctx.task_id))
    return True


async def _stop_if_parent_ended(ctx: AsyncTaskContext, parent: ParentLink) -> None:
    """Before the first step: a child spawned as its parent was being cancelled was missed by the cancel's cascade."""
    if await _cancel_if_parent_ended(ctx, parent):
        raise CancelledTask()


async def _watch_parent(ctx: AsyncTaskContext, parent: ParentLink) -> None:
    """At the lease keeper's pace: cancel this child if its parent ended and the triggers' cascade missed it.

    The cancel is noticed by the lease keeper's next heartbeat (or the next step), which ends the execution.
    """
    interval = max(_absurd.claim_timeout_of(ctx) / 3, 0.5)
    while True:
        await asyncio.sleep(interval)
        try:
            if await _cancel_if_parent_ended(ctx, parent):
                return
        except psycopg.Error as error:  # the connection is busy or gone: the lease keeper deals with it
            logger.debug("cannot check the parent of task %s: %s", ctx.task_id, error)
