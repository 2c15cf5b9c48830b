"""`fork_task`: a new task that reuses the first steps of another task's recording and runs the rest live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from absurd_sdk import AsyncAbsurd

from .._absurd import client_queue_name, spawn_with_checkpoints, task_options
from .._text import unstorable_text_at
from ..errors import ForkError, UnstorableTextError
from ._records import RecordedTask, client_connection, read_recorded
from ._steps import describe_choices, fork_points, wait_of

__all__ = ["FORK_HEADER", "ForkOrigin", "fork_origin", "fork_points_of", "fork_task"]

FORK_HEADER = "pydantic_ai_absurd.forked_from"
"""The task header a fork records its origin in: `{"task_id": ..., "at_step": N, "last_step": name}`."""


@dataclass(frozen=True)
class ForkOrigin:
    """Where a forked task came from: the source task, how many of its steps it reuses, the last one reused."""

    task_id: str
    at_step: int
    last_step: str | None

    def describe(self) -> str:
        """One line, e.g. `forked from 0190… at step 3 (after 'agent__model.request#2')`."""
        after = f" (after {self.last_step!r})" if self.last_step else ""
        return f"forked from {self.task_id} at step {self.at_step}{after}"


def fork_origin(headers: Mapping[str, Any] | None) -> ForkOrigin | None:
    """The origin a forked task's headers record, or `None` for a task that is not a fork."""
    entry = (headers or {}).get(FORK_HEADER)
    if not isinstance(entry, Mapping):
        return None
    data = cast(Mapping[str, Any], entry)
    last = data.get("last_step")
    return ForkOrigin(str(data.get("task_id")), int(data.get("at_step") or 0), str(last) if last else None)


def fork_points_of(task: RecordedTask) -> list[int]:
    """The valid `at_step` values for forking `task`."""
    return fork_points([step.name for step in task.steps])


def _check_at_step(task: RecordedTask, at_step: object) -> int:
    points = fork_points_of(task)
    choices = describe_choices(points)
    if isinstance(at_step, bool) or not isinstance(at_step, int):
        raise ForkError(
            f"Cannot fork task {task.task_id} at step {at_step!r}: at_step must be an integer step count; "
            f"valid choices: {choices}."
        )
    if at_step in points:
        return at_step
    total = len(task.steps)
    if at_step < 0:
        reason = "is negative"
    elif at_step > total:
        reason = f"is beyond the recording, which has {total} committed step(s)"
    else:
        before, after = task.steps[at_step - 1].name, task.steps[at_step].name
        group = (
            "one wait (its ask and its event)" if wait_of(before) is not None else "one parallel batch of tool calls"
        )
        reason = f"would cut {group} in two, between steps {before!r} and {after!r}"
    raise ForkError(f"Cannot fork task {task.task_id} at step {at_step}: it {reason}; valid choices: {choices}.")


async def fork_task(
    absurd: AsyncAbsurd,
    task_id: str | UUID,
    *,
    at_step: int,
    params: Any = None,
    queue: str | None = None,
) -> str:
    """Spawn a fork of task `task_id`: the same task name, its first `at_step` steps replayed; return its ID.

    The new task's first `at_step` checkpoints are copies of the source task's (in write order), so their
    model requests and tool calls are not run again; everything after runs live on the current code when a
    worker picks the task up. The source task is not touched, and may still be running: the prefix is what
    it had committed. `params`, when not `None`, replaces the source's params; the copied steps keep their
    digests, so a change that alters what they asked (a new prompt) fails the fork at the first such step
    with `ReplayDivergenceError` - fork at step 0 to rerun with new params. `at_step` must be a cut between
    steps: not negative, not beyond the recording, not inside a parallel batch of tool calls or between
    a wait's ask and its event (`ForkError` names the valid choices). The origin is recorded in the
    `pydantic_ai_absurd.forked_from` header (`fork_origin`). `queue` defaults to the client's.
    """
    if where := unstorable_text_at(params, "params"):
        raise UnstorableTextError(
            f"Cannot fork task {task_id!r}: Postgres cannot store a NUL character or a lone surrogate ({where}); "
            "remove or escape it first."
        )
    queue_name = queue or client_queue_name(absurd)
    async with client_connection(absurd) as conn:
        source = await read_recorded(conn, queue_name, str(task_id))
        if source is None:
            raise ForkError(f"Cannot fork task {task_id!r}: queue {queue_name!r} has no such task.")
        count = _check_at_step(source, at_step)
        options = await task_options(conn, queue_name, source.task_id) or {}
        prefix = source.steps[:count]
        headers = dict(source.headers)
        headers[FORK_HEADER] = {
            "task_id": source.task_id,
            "at_step": count,
            "last_step": prefix[-1].name if prefix else None,
        }
        spawn_options: dict[str, Any] = {"headers": headers}
        for key in ("max_attempts", "retry_strategy", "cancellation"):
            if options.get(key) is not None:
                spawn_options[key] = options[key]
        # A checkpoint whose name embeds the source task's ID (a run's start time, `@<task id>:<agent>:<n>`)
        # would never be asked for by the fork, whose run IDs differ: it is left out, and the fork's clock starts fresh.
        copied = [(step.name, step.state) for step in prefix if source.task_id not in step.name]
        return await spawn_with_checkpoints(
            conn,
            queue_name,
            source.task_name,
            source.params if params is None else params,
            spawn_options,
            copied,
        )
