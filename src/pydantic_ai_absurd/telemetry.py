"""Replay-safe OpenTelemetry for durable runs: trace context from `spawn` to the worker, and run attributes.

- `otel_hooks()` returns Absurd hooks for `AsyncAbsurd(hooks=...)`. `before_spawn` writes the current
  trace context (W3C `traceparent` / `tracestate`, through the globally configured propagator) into the
  task's headers under `"otel"`; `wrap_task_execution` runs each task execution in an
  `absurd task <name>` span that is a child of it, so one trace shows web request → task → agent run →
  model and tool calls, across processes. `run_worker` applies them by default when OpenTelemetry is
  importable (set `PYDANTIC_AI_ABSURD_OTEL=0` to turn that off).
- Replayed steps produce no spans: Pydantic AI never ends (so never exports) a model-request or tool span
  whose durable units were all replayed, and every step reports whether it ran. Each agent run span of
  an attempt carries `absurd.task_id`, `absurd.run_id`, `absurd.attempt` and `absurd.replayed_steps`,
  and its aggregated token usage counts only the model requests this attempt made, so summing the
  agent run spans of all attempts does not count a request twice.

The usage the agent run span reports is reached through `_pydantic_ai.active_run_usage()` (a private
name of Pydantic AI, documented there); when it is missing the span reports the run's whole usage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any, cast

from absurd_sdk import AbsurdHooks, AsyncTaskContext, CancelledTask, FailedTask, SpawnOptions, SuspendTask
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracer,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)

from . import _absurd
from ._checkpoint import Checkpoint
from ._extensions import DurableRun
from ._pydantic_ai import active_run_usage
from ._step_names import ModelStep, RunStartTime, StepName, ToolsetStep

__all__ = ["OTEL_ENV_VAR", "TRACE_HEADER", "otel_hooks", "run_telemetry", "with_default_hooks"]

TRACE_HEADER = "otel"
"""The task header holding the propagated trace context (a dict of `traceparent`, `tracestate`, ...)."""

OTEL_ENV_VAR = "PYDANTIC_AI_ABSURD_OTEL"
"""Set to `0` to keep `run_worker` from applying `otel_hooks()` by default."""

_MARK = "__pydantic_ai_absurd_otel__"
_TRACER_NAME = "pydantic_ai_absurd"


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME, tracer_provider=provider)


def _inject(options: SpawnOptions) -> SpawnOptions:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return options
    headers = dict(options.get("headers") or {})
    headers[TRACE_HEADER] = cast(Any, carrier)
    return cast(SpawnOptions, {**options, "headers": headers})


def otel_hooks(hooks: AbsurdHooks | None = None, *, tracer_provider: TracerProvider | None = None) -> AbsurdHooks:
    """Hooks for `AsyncAbsurd(hooks=otel_hooks())` that carry the trace context from `spawn` to the worker.

    `before_spawn` works on any client; `wrap_task_execution` is async, for `AsyncAbsurd` workers.

    Args:
        hooks: Hooks to keep: their `before_spawn` runs first (sync or async), then the context is
            injected; their `wrap_task_execution` runs inside the task span.
        tracer_provider: The provider of the task spans (default: the global one).
    """
    base: dict[str, Any] = dict(hooks or {})
    user_wrap = base.get("wrap_task_execution")
    if getattr(user_wrap, _MARK, False):
        return cast(AbsurdHooks, base)  # already applied
    tracer = _tracer(tracer_provider)
    maybe_off = isinstance(tracer, ProxyTracer)  # no provider yet: check at each task whether one is set now

    async def wrap_task_execution(ctx: AsyncTaskContext, execute: Callable[[], Awaitable[Any]]) -> Any:
        carrier = ctx.headers.get(TRACE_HEADER)
        if maybe_off and not isinstance(carrier, dict) and _tracing_off():
            # The span would be a no-op with no parent to make current: skip its bookkeeping.
            result = execute() if user_wrap is None else user_wrap(ctx, execute)
            return await result if inspect.isawaitable(result) else result
        parent = propagate.extract(cast(dict[str, str], carrier)) if isinstance(carrier, dict) else None
        queue, task_name = _absurd.task_identity(ctx)
        with tracer.start_as_current_span(
            f"absurd task {task_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_task_attributes(ctx, queue, task_name),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            run = execute if user_wrap is None else functools.partial(user_wrap, ctx, execute)
            return await _run_recording_outcome(span, run)

    setattr(wrap_task_execution, _MARK, True)
    return cast(AbsurdHooks, {**_absurd.chain_before_spawn(hooks, _inject), "wrap_task_execution": wrap_task_execution})


def _tracing_off() -> bool:
    """Whether no tracer provider is configured globally: the global provider's tracers then record nothing."""
    return isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def _task_attributes(ctx: AsyncTaskContext, queue: str, task_name: str) -> dict[str, Any]:
    task = _absurd.claimed_task_of(ctx)
    return {
        "absurd.queue": queue,
        "absurd.task_name": task_name,
        "absurd.task_id": str(ctx.task_id),
        "absurd.run_id": str(task["run_id"]),
        "absurd.attempt": int(task["attempt"]),
    }


async def _run_recording_outcome(span: Span, run: Callable[[], Any]) -> Any:
    """Run the task (sync or async `run`) and label the span with how it ended."""
    try:
        result: Any = run()
        if inspect.isawaitable(result):
            result = await result
    except SuspendTask:
        span.set_attribute("absurd.outcome", "suspended")
        raise
    except CancelledTask:
        span.set_attribute("absurd.outcome", "cancelled")
        raise
    except FailedTask:
        span.set_attribute("absurd.outcome", "lost")
        raise
    except BaseException as error:
        span.set_attribute("absurd.outcome", "failed")
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    span.set_attribute("absurd.outcome", "completed")
    return result


def with_default_hooks(hooks: AbsurdHooks) -> AbsurdHooks:
    """`otel_hooks(hooks)` unless they are applied already or `PYDANTIC_AI_ABSURD_OTEL=0` (the worker's default)."""
    if os.environ.get(OTEL_ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}:
        return hooks
    return otel_hooks(hooks)


# -- The agent run span of each attempt -------------------------------------------------------------


def _subtract(run_usage: Any, usage: dict[str, Any]) -> None:
    for field in dataclasses.fields(run_usage):
        recorded = usage.get(field.name)
        current = getattr(run_usage, field.name)
        if field.name == "details" and isinstance(recorded, dict) and isinstance(current, dict):
            details = cast(dict[str, int], current)
            for key, value in cast(dict[str, Any], recorded).items():
                if isinstance(value, int) and key in details:
                    details[key] -= value
        elif isinstance(recorded, int | float) and isinstance(current, int | float):
            setattr(run_usage, field.name, current - recorded)


def _value(state: object) -> Any:
    checkpoint = Checkpoint.read(state)
    return None if checkpoint.text is None else checkpoint.value


def _reached(name: StepName, encounters: dict[str, int]) -> bool:
    return encounters.get(name.first().format(), 0) >= name.repeat


def _replayed_steps(
    task_ctx: AsyncTaskContext, names: frozenset[str], prefix: str, agent: str, run_id: str
) -> list[StepName]:
    start_time = StepName(RunStartTime(run_id), agent) if run_id else None
    encounters = _absurd.step_encounters(task_ctx)
    parsed = [StepName.parse(name) for name in names]
    own = [
        name
        for name in parsed
        if (name.run_prefix == prefix and not isinstance(name.operation, RunStartTime)) or name == start_time
    ]
    return [name for name in own if _reached(name, encounters)]


@contextlib.contextmanager
def run_telemetry(task_ctx: AsyncTaskContext, *, agent: str, prefix: str, run_id: str | None) -> Generator[None]:
    """Annotate the current agent run span with the task, the attempt and the steps this attempt replayed.

    Takes the usage of the replayed model requests off the usage the span reports, so that summing the
    agent run spans of every attempt counts each request once.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        yield
        return
    task = _absurd.claimed_task_of(task_ctx)
    span.set_attributes(
        {
            "absurd.task_id": str(task_ctx.task_id),
            "absurd.run_id": str(task["run_id"]),
            "absurd.attempt": int(task["attempt"]),
        }
    )
    preloaded = _absurd.preloaded_checkpoint_names(task_ctx)
    run_usage = active_run_usage()
    try:
        yield
    finally:
        replayed = _replayed_steps(task_ctx, preloaded, prefix, agent, run_id or "")
        span.set_attribute("absurd.replayed_steps", len(replayed))
        if run_usage is not None:
            _discount(run_usage, task_ctx, replayed)


def _discount(run_usage: Any, task_ctx: AsyncTaskContext, replayed: list[StepName]) -> None:
    for name in replayed:
        operation = name.operation
        value = _value(_absurd.checkpoint_state(task_ctx, name.format()))
        if not isinstance(value, dict):
            continue
        entries = cast(dict[str, Any], value)
        if isinstance(operation, ModelStep) and operation.operation in {"request", "request_stream"}:
            if not isinstance(entries.get("usage"), dict):
                continue
            _subtract(run_usage, cast(dict[str, Any], entries["usage"]))
            run_usage.requests -= 1
        elif (
            isinstance(operation, ToolsetStep)
            and operation.operation == "call_tool"
            and entries.get("kind") == "tool_return"
        ):
            run_usage.tool_calls -= 1


class RunTelemetry:
    """The `DurableRunHook` of every capability: `run_telemetry` around each durable agent run.

    The package facade registers it in `_extensions.LAYERS`, so the core needs no import of this module.
    """

    @contextlib.asynccontextmanager
    async def durable_run(self, run: DurableRun) -> AsyncGenerator[None]:
        """Annotate the run's span (see `run_telemetry`)."""
        with run_telemetry(run.task_ctx, agent=run.agent_name, prefix=run.prefix, run_id=run.run_id):
            yield
