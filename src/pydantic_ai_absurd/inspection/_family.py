"""A task's family for `inspect_task`: the parent that spawned it as a child, its children, their usage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg import AsyncConnection

from .. import _absurd
from .._checkpoint import Checkpoint
from ..children import read_children, read_parent
from ._records import TokenUsage
from ._steps import preview

__all__ = ["ChildTaskRecord", "Family", "ParentRecord", "read_family"]

MAX_DEPTH = 16
"""Generations of descendants whose usage `inspect_task` adds up at most."""


@dataclass(frozen=True)
class ParentRecord:
    """The task that spawned this one with `run_as_child`."""

    task_id: str
    queue: str

    def to_json(self) -> dict[str, Any]:
        """As JSON."""
        return {"task_id": self.task_id, "queue": self.queue}


@dataclass(frozen=True)
class ChildTaskRecord:
    """A child task: where it runs, its state, a preview of its output, and the usage of it and its descendants."""

    task_id: str
    queue: str
    task_name: str
    state: str
    output_preview: str | None
    usage: TokenUsage = field(default_factory=TokenUsage)
    """Tokens spent by the child and all its descendants."""

    def to_json(self) -> dict[str, Any]:
        """As JSON (one element of `inspect --json`'s `"children"`)."""
        return {
            "task_id": self.task_id,
            "queue": self.queue,
            "task_name": self.task_name,
            "state": self.state,
            "output_preview": self.output_preview,
            "usage": self.usage.to_json(),
        }


@dataclass(frozen=True)
class Family:
    """A task's parent (if it is a child) and its children."""

    parent: ParentRecord | None = None
    children: tuple[ChildTaskRecord, ...] = ()

    @property
    def descendants_usage(self) -> TokenUsage:
        """Tokens spent by all descendants."""
        total = TokenUsage()
        for child in self.children:
            total += child.usage
        return total


SpentBy = Callable[[AsyncConnection[Any], str, str], Awaitable[TokenUsage]]
"""The tokens a task spent itself (its own model steps), given the connection, queue and task id."""


def _output_preview(state: str, result: object) -> str | None:
    if state != "completed":
        return None
    value: Any = Checkpoint.read(result).value
    output: object = cast(dict[str, Any], value).get("output") if isinstance(value, dict) else value
    return preview(output)


async def read_family(
    conn: AsyncConnection[Any], queue: str, task_id: str, spent_by: SpentBy, depth: int = 0
) -> Family:
    """The parent and the children of a task, each child with the usage of it and its descendants."""
    link = await read_parent(conn, queue, task_id)
    parent = None if link is None else ParentRecord(link.parent_task_id, link.parent_queue)
    children: list[ChildTaskRecord] = []
    for child in await read_children(conn, queue, task_id):
        end = await _absurd.task_end(conn, child.queue, child.task_id)
        state, result = ("deleted", None) if end is None else (end[0], end[1])
        usage = TokenUsage()
        if end is not None and depth < MAX_DEPTH:
            usage = await spent_by(conn, child.queue, child.task_id)
            usage += (await read_family(conn, child.queue, child.task_id, spent_by, depth + 1)).descendants_usage
        children.append(
            ChildTaskRecord(child.task_id, child.queue, child.task_name, state, _output_preview(state, result), usage)
        )
    return Family(parent, tuple(children))
