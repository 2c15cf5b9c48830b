"""Recorded tasks: read from a queue, written to and read from a JSON file (fixtures for a test suite)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import AsyncConnection

from .._absurd import (
    client_conninfo,
    client_queue_name,
    list_queue_names,
    read_checkpoints,
    read_task,
    task_ids_in_states,
)
from .._checkpoint import Checkpoint
from .._db import borrow_connection, create_queue_hint, queue_not_found
from ..errors import RecordingError

__all__ = [
    "DEFAULT_STATES",
    "RecordedStep",
    "RecordedTask",
    "export_recorded",
    "import_recorded",
    "recorded_tasks",
]

DEFAULT_STATES: tuple[str, ...] = ("running", "sleeping")
"""Task states verified by default: the tasks a deploy affects (running, or sleeping / waiting for an event)."""

FILE_FORMAT = "pydantic-ai-absurd/recorded-tasks"
FILE_VERSION = 1


@dataclass(frozen=True)
class RecordedStep:
    """One committed checkpoint of a recorded task: its name (with Absurd's `#N`) and stored state."""

    name: str
    state: Any

    @property
    def asked(self) -> str | None:
        """The one-line summary of what the step was asked, when the checkpoint carries one."""
        return Checkpoint.read(self.state).asked


@dataclass(frozen=True)
class RecordedTask:
    """A task as recorded in Postgres: name, params, headers and its checkpoints in write order."""

    task_id: str
    task_name: str
    params: Any
    steps: tuple[RecordedStep, ...]
    queue: str = ""
    state: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        """The JSON form written by `export_recorded`."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "queue": self.queue,
            "state": self.state,
            "params": self.params,
            "headers": dict(self.headers),
            "checkpoints": [{"name": step.name, "state": step.state} for step in self.steps],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordedTask:
        """Rebuild a recorded task from its JSON form (raises `RecordingError` on a malformed entry)."""
        try:
            steps = tuple(RecordedStep(str(item["name"]), item["state"]) for item in data["checkpoints"])
            return cls(
                task_id=str(data["task_id"]),
                task_name=str(data["task_name"]),
                params=data.get("params"),
                steps=steps,
                queue=str(data.get("queue") or ""),
                state=str(data.get("state") or ""),
                headers=dict(data.get("headers") or {}),
            )
        except (KeyError, TypeError) as err:
            raise RecordingError(
                f"A recorded task entry lacks {err} (expected the format of `verify --export`)."
            ) from err


@asynccontextmanager
async def client_connection(absurd: AsyncAbsurd) -> AsyncGenerator[AsyncConnection[Any]]:
    """A connection of our own to the database of `absurd` (its shared connection stays untouched).

    Reused by the next call in this event loop (`borrow_connection`): a verify run reads task after task.
    """
    conninfo = client_conninfo(absurd)
    if conninfo is None:
        raise RecordingError("The Absurd client has neither a connection string nor a connection to read tasks from.")
    async with borrow_connection(conninfo) as conn:
        yield conn


async def read_recorded(conn: AsyncConnection[Any], queue: str, task_id: str) -> RecordedTask | None:
    """One task of `queue` with its committed checkpoints, or `None` when the queue has no such task."""
    try:
        row = await read_task(conn, queue, task_id)
    except psycopg.errors.UndefinedTable as err:
        raise queue_not_found(queue, f"{create_queue_hint(queue)}.") from err
    except psycopg.errors.InvalidTextRepresentation:
        return None  # not a UUID: no such task
    if row is None:
        return None
    run_id = row.get("last_attempt_run")
    rows = await read_checkpoints(conn, queue, task_id, str(run_id)) if run_id else []
    return RecordedTask(
        task_id=str(row["task_id"]),
        task_name=str(row["task_name"]),
        params=row["params"],
        steps=tuple(RecordedStep(row.checkpoint_name, row.state) for row in rows),
        queue=queue,
        state=str(row["state"]),
        headers=dict(row.get("headers") or {}),
    )


async def find_task_queue(absurd: AsyncAbsurd, task_id: str | UUID) -> str | None:
    """The queue that holds task `task_id` (every queue is searched), or `None` when none does."""
    async with client_connection(absurd) as conn:
        for queue in await list_queue_names(conn):
            try:
                if await read_task(conn, queue, str(task_id)) is not None:
                    return queue
            except psycopg.errors.InvalidTextRepresentation:
                return None  # not a UUID: no queue has it
            except psycopg.errors.UndefinedTable:
                continue  # the queue was dropped meanwhile
    return None


async def recorded_tasks(
    absurd: AsyncAbsurd,
    task_ids: Sequence[str | UUID] | None = None,
    *,
    queue: str | None = None,
    states: Iterable[str] = DEFAULT_STATES,
) -> list[RecordedTask]:
    """Read recorded tasks from the queue: `task_ids`, or every task in one of `states` (oldest first).

    `queue` defaults to the client's queue. An unknown task ID raises `RecordingError`.
    """
    queue_name = queue or client_queue_name(absurd)
    async with client_connection(absurd) as conn:
        if task_ids is None:
            try:
                task_ids = list(await task_ids_in_states(conn, queue_name, list(states)))
            except psycopg.errors.UndefinedTable as err:
                raise queue_not_found(queue_name, f"{create_queue_hint(queue_name)}.") from err
        tasks: list[RecordedTask] = []
        for task_id in map(str, task_ids):
            task = await read_recorded(conn, queue_name, task_id)
            if task is None:
                raise RecordingError(f"Task {task_id!r} does not exist in queue {queue_name!r}.")
            tasks.append(task)
        return tasks


def export_recorded(path: str | PathLike[str], tasks: Iterable[RecordedTask]) -> int:
    """Write `tasks` to the JSON file `path` (params and checkpoints); return how many were written.

    Raises `RecordingError` when the file cannot be written.
    """
    entries = [task.to_json() for task in tasks]
    document = {"format": FILE_FORMAT, "version": FILE_VERSION, "tasks": entries}
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise RecordingError(f"Cannot write recorded tasks to {str(path)!r}: {err.strerror or err}.") from err
    return len(entries)


def import_recorded(path: str | PathLike[str]) -> list[RecordedTask]:
    """Read the recorded tasks `export_recorded` (or `verify --export`) wrote to `path`."""
    try:
        document: object = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise RecordingError(f"Cannot read recorded tasks from {str(path)!r}: {err.strerror or err}.") from err
    except ValueError as err:
        raise RecordingError(f"{str(path)!r} is not a JSON file of recorded tasks: {err}.") from err
    if not isinstance(document, dict) or cast(dict[str, Any], document).get("format") != FILE_FORMAT:
        raise RecordingError(
            f"{str(path)!r} is not a file of recorded tasks written by `pydantic-ai-absurd verify --export`."
        )
    data = cast(dict[str, Any], document)
    if data.get("version") != FILE_VERSION:
        raise RecordingError(
            f"{str(path)!r} has recorded-tasks format version {data.get('version')!r}; this version reads "
            f"{FILE_VERSION}. Export the tasks again."
        )
    entries = cast(list[Mapping[str, Any]], data.get("tasks") or [])
    return [RecordedTask.from_json(entry) for entry in entries]
