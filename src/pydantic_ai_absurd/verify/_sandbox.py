"""The sandbox: a task context over a recording that can replay steps and execute nothing.

`SandboxContext` is an `AsyncTaskContext` built without a database connection, preloaded with the
recorded checkpoints and numbering repeated step names with the SDK's own counter. A step the recording
has replays (its digest is checked by the engine as on any replay); the first step it lacks raises
`WouldRunLive`, a `BaseException`, so no `except Exception:` in user code can swallow it. Running a step
body, writing a checkpoint, sleeping or waiting for an event all end the replay there; emits and
heartbeats do nothing; any other use of the database fails.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import CodeType
from typing import Any, NoReturn, TypeVar, cast

from absurd_sdk import StepHandle

from .._absurd import OfflineTaskContext, offline_task_context
from .._steps import current_step_function

__all__ = ["SandboxContext", "SandboxViolation", "WouldRunLive", "function_location", "sandbox_context"]

_R = TypeVar("_R")


class WouldRunLive(BaseException):
    """Raised in the sandbox at the first step the recording lacks: from there the task would run live."""

    def __init__(self, step: str | None, what: str = "runs live") -> None:
        super().__init__(f"step {step!r} {what}")
        self.step = step
        self.what = what


class SandboxViolation(BaseException):
    """Something tried to use the database from inside the sandbox (a bug, or an unsupported SDK call)."""


class _NoDatabase:
    """Stands in for the context's connection: every use is refused."""

    def __getattr__(self, name: str) -> NoReturn:
        raise SandboxViolation(f"verification runs without a database, but the handler used its connection ({name})")


def function_location(function: object) -> str | None:
    """`file:line` where `function` is defined (relative to the current directory when below it)."""
    code = getattr(function, "__code__", None)
    if not isinstance(code, CodeType) or code.co_filename.startswith("<"):
        return None
    relative = os.path.relpath(code.co_filename)
    return f"{code.co_filename if relative.startswith('..') else relative}:{code.co_firstlineno}"


class SandboxContext(OfflineTaskContext):
    """A task context over a recording (see the module docstring). Built by `sandbox_context`."""

    recording: dict[str, Any]
    asked: list[str]
    """Every checkpoint name the handler asked for, in order (recorded or not)."""
    sources: dict[str, str]
    """Checkpoint name -> `file:line` of the user function the step runs (a tool's), when there is one."""
    emitted: list[str]
    """Events the handler would have emitted (not emitted)."""

    def checkpoint_name_given(self, checkpoint_name: str) -> None:
        """Record the name asked for, and the user function the step runs."""
        self.asked.append(checkpoint_name)
        source = function_location(current_step_function())
        if source is not None:
            self.sources[checkpoint_name] = source

    def last_missing(self) -> str | None:
        """The last name asked for that the recording lacks (the step about to run live)."""
        return next((name for name in reversed(self.asked) if name not in self.recording), None)

    def refuse_live(self, step: str | None) -> NoReturn:
        """The engine's guard: a body would run or a checkpoint be written here."""
        raise WouldRunLive(step if step is not None else self.last_missing())

    async def begin_step(self, name: str) -> StepHandle:
        """Answer from the recording only."""
        checkpoint_name = self.next_checkpoint_name(name)
        if checkpoint_name in self.recording:
            return StepHandle(
                name=name, checkpoint_name=checkpoint_name, done=True, state=self.recording[checkpoint_name]
            )
        return StepHandle(name=name, checkpoint_name=checkpoint_name, done=False)

    async def step(self, name: str, fn: Callable[[], Awaitable[_R]]) -> _R:
        """Replay a recorded step; a new one would run live."""
        handle = await self.begin_step(name)
        if handle.done:
            return cast(_R, handle.state)
        raise WouldRunLive(handle.checkpoint_name)

    async def complete_step(self, handle: StepHandle, value: _R) -> _R:
        """Never writes: a step completed here would have run live."""
        if handle.done:
            return cast(_R, handle.state)
        raise WouldRunLive(handle.checkpoint_name)

    async def sleep_until(self, step_name: str, wake_at: datetime | int | float) -> None:
        """Replay a recorded sleep that is over; any other sleep is where the task would go on live."""
        checkpoint_name = self.next_checkpoint_name(step_name)
        state = self.recording.get(checkpoint_name)
        if checkpoint_name not in self.recording or not isinstance(state, str):
            raise WouldRunLive(checkpoint_name, "sleeps")
        if datetime.fromisoformat(state) > datetime.now(UTC):
            raise WouldRunLive(checkpoint_name, "is still sleeping")

    async def await_event(self, event_name: str, step_name: str | None = None, timeout: int | None = None) -> Any:
        """Replay a received event; waiting for one is where the task would go on live."""
        checkpoint_name = self.next_checkpoint_name(step_name or f"$awaitEvent:{event_name}")
        if checkpoint_name in self.recording:
            return self.recording[checkpoint_name]
        raise WouldRunLive(checkpoint_name, "waits for an event")

    async def emit_event(self, event_name: str, payload: Any = None) -> None:
        """Emit nothing (a replay after the deploy emits again; the first emit of a name wins anyway)."""
        self.emitted.append(event_name)

    async def heartbeat(self, seconds: int | None = None) -> None:
        """Nothing to extend."""

    async def lookup_checkpoint(self, checkpoint_name: str) -> NoReturn:
        """Every recorded checkpoint is answered above: a lookup here would query the database."""
        raise SandboxViolation(f"verification looked up checkpoint {checkpoint_name!r} in the database")

    async def persist_checkpoint(self, checkpoint_name: str, value: Any) -> NoReturn:
        """A checkpoint written here is a step that would run live."""
        raise WouldRunLive(checkpoint_name)

    async def schedule_run_after(self, seconds: float) -> NoReturn:
        """Scheduling the run would write to the database."""
        raise SandboxViolation("verification tried to schedule the run")


def sandbox_context(
    *, task_id: str, task_name: str, queue: str, params: Any, headers: dict[str, Any], recording: dict[str, Any]
) -> SandboxContext:
    """A sandbox context for one recorded task."""
    ctx = offline_task_context(
        SandboxContext,
        task={
            "run_id": f"verify:{task_id}",
            "task_id": task_id,
            "task_name": task_name,
            "attempt": 1,
            "params": params,
            "retry_strategy": None,
            "max_attempts": None,
            "headers": headers,
            "wake_event": None,
            "event_payload": None,
        },
        queue_name=queue,
        checkpoints=dict(recording),
        connection=_NoDatabase(),
    )
    ctx.recording = dict(recording)
    ctx.asked = []
    ctx.sources = {}
    ctx.emitted = []
    return ctx
