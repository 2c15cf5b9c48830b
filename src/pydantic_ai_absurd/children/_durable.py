"""`run_as_child` inside a durable run: spawn once per call site, then wait suspended for the child's end.

A call is identified by the step whose body makes it (a tool call's step, or the task handler itself), the
child's task name and its ordinal among that body's calls (taken before any await, so the calls of an
`asyncio.gather` are numbered in argument order). Its checkpoint in the parent (`....child_task:<name>:<n>`)
holds how the child ended; the spawn uses an idempotency key made of the parent task and that name, so a
re-run body or a retried parent never spawns a second child. A digest of what the call asks (prompt,
history, metadata) is recorded with the link and the checkpoint: a re-run call that asks something else
fails the task for good (`ReplayDivergenceError`) instead of getting another request's child.

The calls of one execution (of every body: parallel tool calls too) form a `_CallGroup`, a barrier: a call
whose child is still running registers as waiting, and only when no call is between its start and its wait
(every call of an `asyncio.gather` has spawned) does the group either hand the children that ended to their
calls, or
suspend the task on the end event of the first child still running (`await_event`: no worker slot, no
connection held). The child's end emits that event on the parent's queue (a trigger, whoever ran the
child); the body then runs again from its start and its calls find their children's ends.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from .. import _absurd
from .._checkpoint import Checkpoint
from .._execution import current_step, execution_state, remember_end
from .._step_names import ChildPart, ChildTaskStep, StepName
from .._steps import begin, commit
from ..errors import ReplayDivergenceError
from ._codec import ChildEnd, ChildRequest, ParentLink
from ._links import install_triggers

__all__ = ["EVENT_PREFIX", "run_durable_child"]

EVENT_PREFIX = "pydantic_ai_absurd.child_ended:"
"""The end event of a child task is this followed by its id, emitted on its parent's queue."""


@dataclass(eq=False)
class _Waiter:
    name: str
    """The checkpoint name of the call (the order in which the group waits)."""
    queue: str
    child_id: str
    event_step: str
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class _CallGroup:
    """The `run_as_child` calls of one execution of a task."""

    context: weakref.ReferenceType[AsyncTaskContext]
    """The execution's context, weakly (the group is the value of a weak dictionary keyed by it)."""
    in_flight: int = 0
    waiters: list[_Waiter] = field(default_factory=list[_Waiter])
    occurrences: dict[tuple[str, str], int] = field(default_factory=dict[tuple[str, str], int])
    flushing: asyncio.Task[None] | None = None

    @property
    def task_ctx(self) -> AsyncTaskContext:
        task_ctx = self.context()
        assert task_ctx is not None, "the execution is over"
        return task_ctx

    def occurrence(self, site: str, task_name: str) -> int:
        """The how-manieth call of `task_name` from the body `site` this is, in this execution."""
        count = self.occurrences.get((site, task_name), 0) + 1
        self.occurrences[(site, task_name)] = count
        return count

    def leave(self) -> None:
        self.in_flight -= 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.in_flight == 0 and self.waiters and self.flushing is None:
            self.flushing = asyncio.ensure_future(self._flush())

    async def wait(self, waiter: _Waiter) -> None:
        """Wait until the child of `waiter` ended (the call is in flight again then), or raise the suspension."""
        self.waiters.append(waiter)
        self.leave()
        try:
            await waiter.future
        except BaseException:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            self.in_flight += 1  # the caller's own `leave` balances it
            raise

    async def _flush(self) -> None:
        waiters = sorted(self.waiters, key=lambda waiter: waiter.name)
        try:
            conn = _absurd.task_connection(self.task_ctx)
            ready = [waiter for waiter in waiters if await _ended(conn, waiter)]
            if not ready:
                first = waiters[0]
                execution_state(self.task_ctx).raise_if_ended()  # suspended (or cancelled) meanwhile
                await remember_end(self.task_ctx, self.task_ctx.await_event(_event(first), step_name=first.event_step))
                ready = [first]
        except BaseException as error:  # the suspension, or a failure: every waiting call raises it
            for waiter in self._take(list(self.waiters)):  # those that came meanwhile too
                waiter.future.set_exception(error)
                # A call whose `gather` already raised never awaits it: no "never retrieved" noise.
                waiter.future.add_done_callback(lambda future: future.exception())
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self.flushing = None
        for waiter in self._take(ready):
            self.in_flight += 1
            waiter.future.set_result(None)
        self._maybe_flush()  # every ready call was cancelled meanwhile: wait for the others

    def _take(self, waiters: list[_Waiter]) -> list[_Waiter]:
        """Those of `waiters` still waiting (a call cancelled meanwhile is gone), removed from the group."""
        taken = [waiter for waiter in waiters if waiter in self.waiters and not waiter.future.done()]
        for waiter in taken:
            self.waiters.remove(waiter)
        return taken


def _event(waiter: _Waiter) -> str:
    return f"{EVENT_PREFIX}{waiter.child_id}"


async def _ended(conn: Any, waiter: _Waiter) -> bool:
    end = await _absurd.task_end(conn, waiter.queue, waiter.child_id)
    return end is None or end[0] in _absurd.TERMINAL_TASK_STATES


_groups: weakref.WeakKeyDictionary[AsyncTaskContext, _CallGroup] = weakref.WeakKeyDictionary()


def _group(task_ctx: AsyncTaskContext) -> _CallGroup:
    group = _groups.get(task_ctx)
    if group is None:
        group = _groups[task_ctx] = _CallGroup(weakref.ref(task_ctx))
    return group


@dataclass(frozen=True)
class ChildCall:
    """One `run_as_child` call: where the child runs and what it is asked."""

    task_name: str
    queue: str
    request: ChildRequest
    max_attempts: int | None
    absurd: AsyncAbsurd | None = None
    """The client whose `before_spawn` hook and defaults the spawn gets (the agent's)."""


SDK_DEFAULT_MAX_ATTEMPTS = 5
"""`AsyncAbsurd`'s own default: a child spawned without a client gets it too (Absurd alone would retry forever)."""


async def run_durable_child(task_ctx: AsyncTaskContext, call: ChildCall) -> ChildEnd:
    """Spawn the child of this call site once and return how it ended (suspending the task until then)."""
    site = current_step()
    group = _group(task_ctx)
    key = call.request.key(call.task_name)
    occurrence = group.occurrence(site or "", call.task_name)  # before any await: `gather` order is call order

    def step(part: ChildPart) -> str:
        call_site = None if site is None else StepName.parse(site)
        return StepName(ChildTaskStep(call_site, call.task_name, occurrence, part)).format()

    group.in_flight += 1
    try:
        handle = await begin(task_ctx, step("result"))
        if handle.done:
            ended = ChildEnd.from_json(Checkpoint.read(handle.state).decode(step=handle.checkpoint_name))
            await _check_request(task_ctx, handle.checkpoint_name, ended.request_key, key)
            return ended
        child_id, recorded = await _spawn(task_ctx, call, handle.checkpoint_name, key)
        await _check_request(task_ctx, handle.checkpoint_name, recorded, key)
        waiter = _Waiter(handle.checkpoint_name, call.queue, child_id, step("event"))
        await group.wait(waiter)
        conn = _absurd.task_connection(task_ctx)
        end = await _absurd.task_end(conn, call.queue, child_id)
        ended = (
            ChildEnd(child_id, "missing", failure="the child task no longer exists (removed by Absurd's cleanup?)")
            if end is None
            else ChildEnd.of_task(child_id, *end)
        )
        ended = replace(ended, request_key=key)
        await commit(task_ctx, handle, Checkpoint.of(ended.to_json()).stored())
        return ended
    finally:
        group.leave()


async def _check_request(task_ctx: AsyncTaskContext, step: str, recorded: str | None, key: str) -> None:
    """Fail the task for good when the call at `step` asks its child something else than it did before."""
    if recorded is None or recorded == key:
        return
    await remember_end(task_ctx, _absurd.give_up_retries(task_ctx))
    raise ReplayDivergenceError(
        f"Replay diverged at step {step!r}: this run_as_child call asks its child something else than on the first "
        "run (prompt, message history or metadata changed). Compute them from checkpointed data only: the tool body "
        "runs again when the task resumes.",
        step=step,
        recorded=f"request digest {recorded}",
        requested=f"request digest {key}",
    )


async def _spawn(task_ctx: AsyncTaskContext, call: ChildCall, checkpoint_name: str, key: str) -> tuple[str, str | None]:
    conn = _absurd.task_connection(task_ctx)
    parent_queue, _ = _absurd.task_identity(task_ctx)
    parent = ParentLink(parent_queue, str(task_ctx.task_id))
    for queue in dict.fromkeys((parent_queue, call.queue)):
        await install_triggers(conn, queue)
    params = call.request.params(parent)
    key_option = f"pydantic-ai-absurd:{parent.task_id}:{checkpoint_name}"
    if call.absurd is not None:
        options = await _absurd.spawn_options(
            call.absurd,
            call.task_name,
            params,
            queue=call.queue,
            idempotency_key=key_option,
            max_attempts=call.max_attempts,
        )
    else:  # no client to ask for hooks and defaults: absurd-sdk's default attempts, never Absurd's unlimited ones
        options = {"idempotency_key": key_option, "max_attempts": call.max_attempts or SDK_DEFAULT_MAX_ATTEMPTS}
    return await remember_end(
        task_ctx,
        _absurd.spawn_linked_child(
            conn,
            queue_name=call.queue,
            task_name=call.task_name,
            params=params,
            options=options,
            parent_queue=parent_queue,
            parent_task_id=parent.task_id,
            call_site=checkpoint_name,
            request_key=key,
            event_prefix=EVENT_PREFIX,
        ),
    )
