"""Human-readable output of `inspect` (at most 100 columns wide) and the rows of the `tasks` table."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import datetime
from typing import Any, cast

from .._step_names import StepName
from .._text import visible
from ..errors import InvalidDurationError
from ._records import AttemptRecord, LostExecution, StepRecord, TaskSummary, TaskTimeline, TokenUsage
from ._steps import short_label

__all__ = ["TASK_HEADERS", "WIDTH", "parse_duration", "render_timeline", "task_row", "unknown_task_notes"]

WIDTH = 100
"""Columns the human output fits in."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in `text`: a number of seconds, or spans like `90s`, `15m`, `2h`, `1h30m`, `7d`, `2w`."""
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        pieces = _DURATION.findall(stripped)
        if not pieces or _DURATION.sub("", stripped).strip():
            raise InvalidDurationError(
                f"Invalid duration {text!r}: use seconds or spans like 90s, 15m, 2h, 1h30m, 7d."
            ) from None
        seconds = sum(float(amount) * _UNITS[unit.lower()] for amount, unit in pieces)
    if seconds < 0:
        raise InvalidDurationError(f"Invalid duration {text!r}: it must not be negative.")
    return seconds


def _fit(text: str, width: int) -> str:
    text = " ".join(visible(text).split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _tokens(usage: TokenUsage) -> str:
    return f"{usage.total_tokens} (in {usage.input_tokens}, out {usage.output_tokens}, {usage.requests} requests)"


TASK_HEADERS = ("TASK ID", "QUEUE", "NAME", "STATE", "ATT", "AGE", "LAST STEP")
"""The columns of the `tasks` table (`task_row`)."""


def task_row(task: TaskSummary) -> tuple[str, ...]:
    """One row of the `tasks` table: task id, queue, name, state, attempts, age and the agent's last step."""
    return (
        task.task_id,
        task.queue,
        task.task_name,
        task.state,
        str(task.attempts),
        _age(task.age_seconds),
        _last_step(task),
    )


def unknown_task_notes(tasks: list[TaskSummary]) -> list[str]:
    """One line per task name no worker of its queue runs, among `tasks` not finished (printed below the table)."""
    unknown = sorted({(task.queue, task.task_name) for task in tasks if _unknown(task.known_to_workers, task.state)})
    return [
        _fit(f"{_UNKNOWN_TASK}: no worker of queue {queue} registers {name!r} (check the name)", WIDTH)
        for queue, name in unknown
    ]


_UNKNOWN_TASK = "no worker knows this task"
_FINISHED = {"completed", "failed", "cancelled"}


def _unknown(known_to_workers: bool | None, state: str) -> bool:
    return known_to_workers is False and state not in _FINISHED


def _last_step(task: TaskSummary) -> str:
    if _unknown(task.known_to_workers, task.state):
        return "no worker knows it"
    return short_label(task.last_step) if task.last_step else "-"


def _attempt_lines(attempt: AttemptRecord) -> list[str]:
    steps = f"{attempt.steps_executed} step{'s' if attempt.steps_executed != 1 else ''} written"
    line = (
        f"  #{attempt.attempt:<3} {attempt.ended.replace('_', ' '):<13} by {_fit(attempt.claimed_by or '-', 30):<30}"
        f"  {_time(attempt.started_at)}  {steps}"
    )
    lines = [line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"]
    recorded: object = attempt.failure
    if isinstance(recorded, dict):
        failure = cast(dict[str, Any], recorded)
        reason = f"{failure.get('name', '')}: {failure.get('message', '')}".strip(": ")
        if reason:
            lines.append("       " + _fit(reason, WIDTH - 7))
        trace = failure.get("traceback")
        if isinstance(trace, str) and trace.strip():
            lines.extend(_traceback_lines(trace))
    elif attempt.ended == "waiting" and attempt.wake_event:
        lines.append("       " + _fit(f"waiting for event {attempt.wake_event}", WIDTH - 7))
    elif attempt.ended == "provider_wait":
        lines.append(
            "       "
            + _fit(f"waiting for the provider (asked to retry later) until {_time(attempt.available_at)}", WIDTH - 7)
        )
    return lines


def _traceback_lines(trace: str) -> list[str]:
    """The traceback, indented, long lines wrapped (never cut: the end of a path is what matters)."""
    lines: list[str] = []
    for line in trace.rstrip().splitlines():
        lines.extend(
            textwrap.wrap(
                visible(line), WIDTH, initial_indent="       | ", subsequent_indent="       |   ", drop_whitespace=False
            )
            or ["       |"]
        )
    return lines


def _lost_lines(lost: LostExecution, steps: dict[int, StepRecord]) -> list[str]:
    how = "worker died" if lost.how == "worker_died" else "lease expired"
    claimed = lost.claimed_at.strftime("%H:%M:%S.%f")[:-3] if lost.claimed_at else "-"
    lines = [_fit(f"  #{lost.attempt:<3} {how:<13} by {lost.worker or '-'}, claimed {claimed}", WIDTH)]
    when = lost.lost_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if lost.lost_at else "-"
    verb = "taken over" if lost.how == "worker_died" else "failed"
    lines.append(_fit(f"       {verb} at {when}" + (f" by {lost.taken_over_by}" if lost.taken_over_by else ""), WIDTH))
    reran = [f"{index} {short_label(steps[index].name)}" for index in lost.reran if index in steps]
    lines.append(_fit("       ran again (in flight when it died): " + ("; ".join(reran) or "no step"), WIDTH))
    return lines


def _step_lines(step: StepRecord) -> list[str]:
    who = f"ran #{step.executed_by}" if step.executed_by is not None else "ran ?"
    if step.replayed_by:
        who += ", replayed #" + ",#".join(str(attempt) for attempt in step.replayed_by)
    time = step.committed_at.strftime("%H:%M:%S.%f")[:-3] if step.committed_at else "-"
    head = f"  {step.index:>4}  {step.kind:<14} "
    tail = f" {who} {time}"
    if step.kind in {"tool_call", "mcp_call", "validate_args"}:
        args = "" if step.tool_args is None else _json(step.tool_args)
        what = f"{step.tool_name or '?'}({args})"
    elif step.kind == "model_request":
        usage = step.usage
        what = f"{step.model_name or '?'} [{usage.input_tokens}+{usage.output_tokens} tok]" if usage else "?"
        what += f" {step.preview}" if step.preview else ""
    else:
        named = step.kind in {"other", "conversation_load", "conversation_save"}
        what = StepName.parse(step.name).operation_text() if named else (step.preview or "")
    if step.waited_seconds is not None:
        what = f"waited {step.waited_seconds:.1f}s" + (f": {what}" if what else "")
    first = head + _fit(what, WIDTH - len(head) - len(tail)).ljust(WIDTH - len(head) - len(tail)) + tail
    lines = [first.rstrip()]
    detail = step.error or step.result_preview
    if detail:
        lines.append("        " + _fit(("error: " if step.error else "→ ") + detail, WIDTH - 8))
    return lines


def render_timeline(timeline: TaskTimeline) -> str:
    """The `inspect` report: the task, its attempts, its steps by agent run, and the totals."""
    out = [
        _fit(f"Task {timeline.task_id} ({timeline.task_name}) on queue {timeline.queue}: {timeline.state}", WIDTH),
        "  params:  " + _fit(_json(timeline.params), WIDTH - 11),
    ]
    if _unknown(timeline.known_to_workers, timeline.state):
        out.append(
            _fit(f"  {_UNKNOWN_TASK}: no worker of queue {timeline.queue} registers {timeline.task_name!r}", WIDTH)
        )
        out.append("  it waits until one does: check the name, or start a worker that registers it")
    if timeline.forked_from:
        out.append(f"  forked from: {timeline.forked_from}")
    if timeline.parent is not None:
        out.append(f"  child of: {timeline.parent.task_id} on queue {timeline.parent.queue}")
    if timeline.result is not None:
        out.append("  result:  " + _fit(_json(timeline.result), WIDTH - 11))
    if timeline.failure is not None:
        out.append("  failure: " + _fit(_json(timeline.failure), WIDTH - 11))
    out.append(f"  spawned: {_time(timeline.enqueued_at)}   started: {_time(timeline.started_at)}")
    out.append("")
    out.append(f"Attempts ({len(timeline.attempts)}{f' of {timeline.max_attempts}' if timeline.max_attempts else ''})")
    for attempt in timeline.attempts:
        out.extend(_attempt_lines(attempt))
    if timeline.lost_executions:
        out.append("")
        out.append(f"Lost executions ({len(timeline.lost_executions)})")
        by_index = {step.index: step for step in timeline.steps}
        for lost in timeline.lost_executions:
            out.extend(_lost_lines(lost, by_index))
    for run in timeline.runs:
        out.append("")
        label = "Steps outside agent runs" if run.agent is None else f"Agent run {run.agent} #{run.run_ordinal}"
        out.append(f"{label} ({len(run.steps)} steps, {run.usage.total_tokens} tokens)")
        for step in run.steps:
            out.extend(_step_lines(step))
    totals = timeline.totals
    out.append("")
    out.append("Totals")
    out.append(f"  tokens spent:           {_tokens(totals.tokens_spent)}")
    out.append(f"  tokens saved by replay: {_tokens(totals.tokens_saved)}")
    out.append(f"  steps:                  {totals.steps} ({totals.steps_replayed} replayed by a later attempt)")
    out.append(f"  waiting for input / sleeping: {totals.waiting_seconds:.1f}s")
    out.extend(_children_lines(timeline))
    return "\n".join(out)


def _children_lines(timeline: TaskTimeline) -> list[str]:
    if not timeline.children:
        return []
    out = ["", f"Children ({len(timeline.children)})"]
    for child in timeline.children:
        out.append(_fit(f"  {child.task_id}  {child.task_name:<16} {child.state:<9} {_tokens(child.usage)}", WIDTH))
        if child.output_preview is not None:
            out.append("    output: " + _fit(child.output_preview, WIDTH - 12))
    out.append(f"  total with descendants: {_tokens(timeline.total_usage)}")
    return out
