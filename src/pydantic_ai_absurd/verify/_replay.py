"""`verify_replay`: replay recorded tasks against the handlers of the code about to be deployed."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import pydantic_ai
from absurd_sdk import AsyncAbsurd

from .._absurd import check_offline_context_names, current_context, registered_handlers
from .._steps import replay_only
from ..errors import ReplayDivergenceError, one_line
from ._records import DEFAULT_STATES, RecordedStep, RecordedTask, recorded_tasks
from ._report import Divergence, TaskReplay, VerifyReport
from ._sandbox import SandboxContext, WouldRunLive, function_location, sandbox_context
from ._steps import StepPlace, is_model_request, lane_of, places, tool_call_of

__all__ = ["Handler", "ProgressCallback", "replay_recorded", "verify_replay"]

DEFAULT_TIMEOUT = 30.0
"""Seconds a replay may take before it is reported as an error (a replay awaits nothing but recorded steps)."""

Handler = Callable[[Any, Any], Awaitable[Any]]
"""A registered task handler: `async def handler(params, ctx)`."""

ProgressCallback = Callable[[int, int], None]
"""`progress(done, total)`: how many of the tasks being verified are done (the CLI's progress line)."""


async def verify_replay(
    absurd: AsyncAbsurd,
    task_ids: Sequence[str | UUID] | None = None,
    *,
    queue: str | None = None,
    states: Iterable[str] = DEFAULT_STATES,
    records: Iterable[RecordedTask] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Replay recorded tasks against the handlers registered on `absurd`, executing nothing.

    Without `records`, the tasks are read from the queue (`queue`, default the client's): `task_ids`, or
    every task in one of `states` (running or sleeping: the tasks a deploy affects). With `records` (from
    `import_recorded`), those are verified and the database is not used. Every step a handler asks for
    must be in the recording, in order, with the same digest; the replay of a task stops, fine, at the
    first step the recording lacks (it would run live) and reports the first divergence otherwise. A
    replay that takes longer than `timeout` seconds (the handler awaits something that is not a step) is
    reported as an error. `progress(done, total)` is called before the first task and after each one.
    """
    tasks = list(records) if records is not None else await recorded_tasks(absurd, task_ids, queue=queue, states=states)
    if records is not None and task_ids is not None:
        wanted = {str(task_id) for task_id in task_ids}
        tasks = [task for task in tasks if task.task_id in wanted]
    return await replay_recorded(registered_handlers(absurd), tasks, timeout=timeout, progress=progress)


async def replay_recorded(
    handlers: Mapping[str, Handler],
    tasks: Iterable[RecordedTask],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Replay each of `tasks` with the handler registered under its task name (see `verify_replay`)."""
    check_offline_context_names()
    pending = list(tasks)
    verdicts: list[TaskReplay] = []
    banner = pydantic_ai.BANNER_ENABLED
    pydantic_ai.BANNER_ENABLED = False  # a replay is no one's first agent run: keep the banner out of the report
    try:
        for task in pending:
            if progress is not None:
                progress(len(verdicts), len(pending))
            verdicts.append(await _replay_one(handlers, task, timeout))
    finally:
        pydantic_ai.BANNER_ENABLED = banner
    if progress is not None:
        progress(len(verdicts), len(pending))
    return VerifyReport(tuple(verdicts))


async def _replay_one(handlers: Mapping[str, Handler], task: RecordedTask, timeout: float) -> TaskReplay:
    handler = handlers.get(task.task_name)
    recorded = len(task.steps)
    if handler is None:
        known = ", ".join(sorted(handlers)) or "none"
        return TaskReplay(
            task.task_id,
            task.task_name,
            "error",
            0,
            recorded,
            error=f"no handler is registered for task {task.task_name!r} (registered: {known}); a worker of "
            "this code would never run it",
        )
    ctx = sandbox_context(
        task_id=task.task_id,
        task_name=task.task_name,
        queue=task.queue or "verify",
        params=task.params,
        headers=dict(task.headers),
        recording={step.name: step.state for step in task.steps},
    )

    async def run() -> BaseException | None:
        with current_context(ctx), replay_only(ctx.refuse_live):
            try:
                await handler(task.params, ctx)
            except BaseException as error:
                current = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and current is not None and current.cancelling():
                    raise
                return error
        return None

    # A task of its own: the engine's context variables set during the replay stay there.
    replay = asyncio.create_task(run(), context=contextvars.Context())
    try:
        outcome = await asyncio.wait_for(replay, timeout)
    except TimeoutError:
        return TaskReplay(
            task.task_id,
            task.task_name,
            "error",
            0,
            recorded,
            error=f"the replay did not finish within {timeout:g} s: the handler awaits something that is not "
            "a step (a lock, a queue, a network call outside any step)",
        )
    return _verdict(task, ctx, outcome, _fallback_source(handler))


def _fallback_source(handler: Handler) -> str | None:
    return function_location(inspect.unwrap(handler))


def _find(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    if error is None:
        return None
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
            found = _find(inner, kind)  # pyright: ignore[reportUnknownArgumentType]
            if found is not None:
                return found
    return None


def _summary(step: RecordedStep) -> str:
    return f"step {step.name!r}" + (f" ({step.asked})" if step.asked else "")


class _Order:
    """The order rule: a recorded step asked for while an earlier recorded step it must follow is still unasked."""

    def __init__(self, task: RecordedTask) -> None:
        self.steps = {step.name: step for step in task.steps}
        self.places = {place.name: place for place in places([step.name for step in task.steps])}
        self.spans: dict[str, tuple[int, int]] = {}
        for place in self.places.values():
            first, last = self.spans.get(place.lane, (place.position, place.position))
            self.spans[place.lane] = (min(first, place.position), max(last, place.position))
        self.unasked = dict(self.places)
        self.requests: dict[str, int] = {}

    def _concurrent(self, lane: str, other: str) -> bool:
        span, other_span = self.spans.get(lane), self.spans.get(other)
        if span is None or other_span is None:
            return False
        return span[0] <= other_span[1] and other_span[0] <= span[1]

    def _must_precede(self, earlier: StepPlace, name: str, batch: int) -> bool:
        lane = lane_of(name)
        if earlier.lane == lane:
            return not (earlier.tool_call is not None and tool_call_of(name) is not None and earlier.batch == batch)
        return not self._concurrent(earlier.lane, lane)

    def skipped_before(self, name: str) -> StepPlace | None:
        """An unasked recorded step the step `name` may only follow (the first one), if any."""
        place = self.places.get(name)
        batch = place.batch if place is not None else self.requests.get(lane_of(name), 0)
        limit = place.position if place is not None else len(self.places)
        for earlier in sorted(self.unasked.values(), key=lambda item: item.position):
            if earlier.position >= limit:
                break
            if self._must_precede(earlier, name, batch):
                return earlier
        return None

    def ask(self, name: str) -> None:
        self.unasked.pop(name, None)
        if is_model_request(name):
            lane = lane_of(name)
            self.requests[lane] = self.requests.get(lane, 0) + 1


_Mismatch = tuple[str, str, str, str | None]
"""A divergence found while walking the asked steps: step, what was recorded, what was requested, a diff."""


def _walk_asked(
    ctx: SandboxContext, order: _Order, digest_error: BaseException | None, stop_step: str | None
) -> tuple[int, _Mismatch | None]:
    """Follow the steps the replay asked for, in order: how many replayed before the first mismatch, if any."""
    diverged_at = digest_error.step if isinstance(digest_error, ReplayDivergenceError) else None
    replayed = 0
    for name in ctx.asked:
        if name not in order.places and name != stop_step:
            continue  # a probe for a checkpoint that may not exist yet (a wait's timeout)
        skipped = order.skipped_before(name)
        if skipped is not None:
            if name == diverged_at and isinstance(digest_error, ReplayDivergenceError):
                detail = f" ({digest_error.requested})"
            else:
                detail = ""
            kind = "step" if name in order.steps else "new step"
            return replayed, (
                name,
                f"{_summary(order.steps[skipped.name])} next",
                f"{kind} {name!r}{detail} instead",
                None,
            )
        if name == diverged_at and isinstance(digest_error, ReplayDivergenceError):
            return replayed, (name, digest_error.recorded, digest_error.requested, digest_error.diff)
        if name == stop_step:
            break
        order.ask(name)
        replayed += 1
    return replayed, None


def _verdict(
    task: RecordedTask, ctx: SandboxContext, outcome: BaseException | None, fallback: str | None
) -> TaskReplay:
    recorded = len(task.steps)
    digest_error = _find(outcome, ReplayDivergenceError)
    stop = _find(outcome, WouldRunLive)
    stop_step = stop.step if isinstance(stop, WouldRunLive) else None
    order = _Order(task)
    replayed, mismatch = _walk_asked(ctx, order, digest_error, stop_step)

    def diverged(step: str, recorded_text: str, requested: str, diff: str | None = None) -> TaskReplay:
        source = ctx.sources.get(step, fallback)
        return TaskReplay(
            task.task_id,
            task.task_name,
            "diverged",
            replayed,
            recorded,
            divergence=Divergence(step, recorded_text, requested, source, diff),
        )

    if mismatch is not None:
        return diverged(*mismatch)
    if isinstance(digest_error, ReplayDivergenceError):
        return diverged(digest_error.step, digest_error.recorded, digest_error.requested, digest_error.diff)
    if stop is not None:
        return TaskReplay(task.task_id, task.task_name, "ok", replayed, recorded, next_step=stop_step)
    if outcome is not None:
        if isinstance(outcome, KeyboardInterrupt | SystemExit):
            raise outcome
        return TaskReplay(
            task.task_id,
            task.task_name,
            "error",
            replayed,
            recorded,
            error=f"the handler raised on replay: {one_line(outcome, with_type=True)}",
        )
    if order.unasked:
        first = min(order.unasked.values(), key=lambda item: item.position)
        return diverged(
            first.name,
            _summary(order.steps[first.name]),
            "nothing: the handler finished without asking for it",
        )
    return TaskReplay(task.task_id, task.task_name, "ok", replayed, recorded)
