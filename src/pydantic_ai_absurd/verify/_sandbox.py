"""The sandbox: a task context over a recording that can replay steps and execute nothing.

`SandboxContext` is an `AsyncTaskContext` built without a database connection, preloaded with the
recorded checkpoints and numbering repeated step names with the SDK's own counter. A step the recording
has replays (its digest is checked by the engine as on any replay); the first step it lacks raises
`WouldRunLive`, a `BaseException`, so no `except Exception:` in user code can swallow it. Running a step
body, writing a checkpoint, sleeping or waiting for an event all end the replay there; emits and
heartbeats do nothing; any other use of the database fails.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import sysconfig
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn, TypeVar, cast

from absurd_sdk import StepHandle

from .._absurd import NamingHookContext, offline_task_context
from ._steps import tool_call_of

__all__ = ["SandboxContext", "SandboxViolation", "WouldRunLive", "sandbox_context"]

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


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    import absurd_sdk
    import pydantic
    import pydantic_ai

    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], os.path.dirname(os.path.dirname(__file__))}
    for module in (pydantic_ai, pydantic, absurd_sdk):
        dirs.add(os.path.dirname(module.__file__ or ""))
    return tuple(sorted(directory + os.sep for directory in dirs if directory))


def _user_location(frame: FrameType) -> str | None:
    filename = frame.f_code.co_filename
    if filename.startswith(_library_dirs()) or filename.startswith("<"):
        return None
    relative = os.path.relpath(filename)
    return f"{filename if relative.startswith('..') else relative}:{frame.f_lineno}"


def user_frame(frame: FrameType | None) -> str | None:
    """`file:line` of the innermost frame at or above `frame` that is user code (not a library's)."""
    while frame is not None:
        location = _user_location(frame)
        if location is not None:
            return location
        frame = frame.f_back
    return None


def tool_function_location(frame: FrameType | None, *, depth: int = 40) -> str | None:
    """`file:line` of the tool function being called at or above `frame`, when a function tool is found.

    Best effort, by duck typing: a local `tool` whose `call_func` is bound to an object with a `function`.
    """
    while frame is not None and depth > 0:
        tool = frame.f_locals.get("tool")
        call_func = getattr(tool, "call_func", None)
        function = getattr(getattr(call_func, "__self__", None), "function", None)
        if inspect.isfunction(function):
            code = function.__code__
            relative = os.path.relpath(code.co_filename)
            return f"{code.co_filename if relative.startswith('..') else relative}:{code.co_firstlineno}"
        frame = frame.f_back
        depth -= 1
    return None


def awaiting_user_frame(task: asyncio.Task[Any] | None) -> str | None:
    """`file:line` of the deepest user code in the chain of awaits of `task` (where it awaits an agent run)."""
    found: str | None = None
    coro: Any = task.get_coro() if task is not None else None
    while coro is not None:
        frame: FrameType | None = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        found = _user_location(frame) or found
        coro = getattr(coro, "cr_await", None)
    return found


def _caller_of_the_naming_hook() -> FrameType | None:
    # this function <- checkpoint_name_given <- the SDK's naming method <- whoever asked for the step
    frame = inspect.currentframe()
    for _ in range(3):
        frame = frame.f_back if frame is not None else None
    return frame


class SandboxContext(NamingHookContext):
    """A task context over a recording (see the module docstring). Built by `sandbox_context`."""

    recording: dict[str, Any]
    asked: list[str]
    """Every checkpoint name the handler asked for, in order (recorded or not)."""
    sources: dict[str, str]
    """Checkpoint name -> `file:line` of the user code that asked for it."""
    emitted: list[str]
    """Events the handler would have emitted (not emitted)."""
    root: asyncio.Task[Any] | None
    """The task running the handler (its chain of awaits leads to the user code asking for a step)."""

    def checkpoint_name_given(self, checkpoint_name: str) -> None:
        """Record the name asked for, and the user code that asked for it."""
        self.asked.append(checkpoint_name)
        caller = _caller_of_the_naming_hook()
        source = tool_function_location(caller) if tool_call_of(checkpoint_name) is not None and caller else None
        source = source or (user_frame(caller) if caller else None) or awaiting_user_frame(self.root)
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

    async def _lookup_checkpoint(self, checkpoint_name: str) -> object:
        raise SandboxViolation(f"verification looked up checkpoint {checkpoint_name!r} in the database")

    async def _persist_checkpoint(self, checkpoint_name: str, value: Any) -> None:
        raise WouldRunLive(checkpoint_name)

    async def _schedule_run_after(self, seconds: float) -> None:
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
    ctx.root = None
    return ctx
