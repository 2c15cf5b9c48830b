"""Inspection: what a durable task did, step by step, read from Absurd's tables and our checkpoints.

`inspect_task(absurd, task_id)` returns a `TaskTimeline`: the task (name, queue, state, params, result
or failure), its attempts (who claimed each, when, how it ended, the failure traceback), the executions
lost with their worker (taken over or lease expired, and the steps that ran again), every step in execution order
grouped by agent run (kind, model, token usage, previews, tool name and arguments, the attempt that
ran it and the attempts that replayed it) and totals (tokens spent, tokens saved by replay, time
waiting), and its family: the parent that spawned it with `run_as_child`, its children (state, output
preview, usage) and the total usage of the task and all its descendants. `list_tasks` lists tasks newest first. The CLI's `inspect` and `tasks` print them.
"""

from ._family import ChildTaskRecord, ParentRecord
from ._records import (
    JSON_FORMAT_VERSION,
    AgentRunRecord,
    AttemptRecord,
    LostExecution,
    StepKind,
    StepRecord,
    TaskSummary,
    TaskTimeline,
    TimelineTotals,
    TokenUsage,
)
from ._timeline import FORKED_FROM_HEADER, inspect_task, list_tasks

__all__ = [
    "FORKED_FROM_HEADER",
    "JSON_FORMAT_VERSION",
    "AgentRunRecord",
    "AttemptRecord",
    "ChildTaskRecord",
    "ParentRecord",
    "LostExecution",
    "StepKind",
    "StepRecord",
    "TaskSummary",
    "TaskTimeline",
    "TimelineTotals",
    "TokenUsage",
    "inspect_task",
    "list_tasks",
]
