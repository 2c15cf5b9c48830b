"""The records `inspect_task` and `list_tasks` return, and their stable JSON form.

`to_json()` on each record is the `--json` output of the CLI: keys are never renamed or removed
within a major version (new keys may be added); times are ISO 8601 strings in UTC, durations are
seconds, token counts are integers, absent values are `null`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

__all__ = [
    "JSON_FORMAT_VERSION",
    "AgentRunRecord",
    "AttemptRecord",
    "LostExecution",
    "StepKind",
    "StepRecord",
    "TaskSummary",
    "TaskTimeline",
    "TimelineTotals",
    "TokenUsage",
]

if TYPE_CHECKING:
    from ._family import ChildTaskRecord, ParentRecord

JSON_FORMAT_VERSION = 1
"""The version of the `--json` format (the `"format"` key of `inspect --json` and `tasks --json`)."""

StepKind = Literal[
    "model_request",
    "tool_call",
    "mcp_call",
    "validate_args",
    "get_tools",
    "get_instructions",
    "event_handler",
    "wait_for_input",
    "sleep",
    "provider_wait",
    "run_start_time",
    "capability",
    "conversation_load",
    "conversation_save",
    "child_task",
    "other",
]
"""What a step was: a model request, a tool call (function, dynamic), an MCP call, an argument validation,
a tool listing, MCP instructions, an event-handler call, a wait for input (ask, event, timeout), a graph
sleep, when a model step was first told by its provider to retry later, the recorded start time of a run, a capability
operation, the load or the save of a stored conversation, a child task's end (or its end event), or a step of the user's own."""

AttemptEnd = Literal[
    "completed", "failed", "lease_expired", "cancelled", "sleeping", "provider_wait", "waiting", "running", "pending"
]
"""How a run (attempt) ended, or where it is: `failed` (with `failure`), `lease_expired` (`$ClaimTimeout`:
the worker died or stalled), `sleeping` (suspended or handed back, claimable again at `available_at`),
`provider_wait` (suspended until `available_at` because the model's provider asked to retry later),
`waiting` (for an event), `running`, `pending` (not claimed yet)."""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one model response, or a sum of them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.requests + other.requests,
        )

    def to_json(self) -> dict[str, int]:
        """`{"input_tokens", "output_tokens", "cache_read_tokens", "total_tokens", "requests"}`."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "total_tokens": self.total_tokens,
            "requests": self.requests,
        }


@dataclass(frozen=True)
class AttemptRecord:
    """One run of the task (Absurd makes one per attempt): who claimed it, when, and how it ended."""

    attempt: int
    run_id: str
    state: str
    """Absurd's run state: pending, running, sleeping, completed, failed or cancelled."""
    ended: AttemptEnd
    claimed_by: str | None
    created_at: datetime | None
    started_at: datetime | None
    """When the run was last claimed (a resumed run keeps its attempt number)."""
    finished_at: datetime | None
    """When it completed or failed (None while it is not finished)."""
    failure: Any | None
    """Absurd's `failure_reason` (`{"name", "message", ...}`) of a failed run."""
    wake_event: str | None
    available_at: datetime | None
    steps_executed: int = 0
    """Checkpoints this run wrote."""

    def to_json(self) -> dict[str, Any]:
        """The attempt as JSON (see the module docstring for the conventions)."""
        return {
            "attempt": self.attempt,
            "run_id": self.run_id,
            "state": self.state,
            "ended": self.ended,
            "claimed_by": self.claimed_by,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "failure": self.failure,
            "wake_event": self.wake_event,
            "available_at": _iso(self.available_at),
            "steps_executed": self.steps_executed,
        }


@dataclass(frozen=True)
class LostExecution:
    """An execution of an attempt that died with its worker, and what ran again because of it."""

    attempt: int
    how: Literal["worker_died", "lease_expired"]
    """`worker_died`: a peer saw the worker's liveness lock gone and took the run over (same attempt);
    `lease_expired`: the lease ran out and Absurd failed the attempt (`$ClaimTimeout`), the next attempt resumed."""
    worker: str | None
    """`claimed_by` of the lost execution."""
    claimed_at: datetime | None
    lost_at: datetime | None
    """When the takeover happened (or the attempt was failed for its expired lease)."""
    taken_over_by: str | None
    """The worker that took the run over (`worker_died`) or claimed the next attempt (`lease_expired`)."""
    reran: tuple[int, ...] = ()
    """Indexes of the steps that ran again after it: the steps in flight when the worker died (a model
    request, or the tool calls of one model response)."""

    def to_json(self) -> dict[str, Any]:
        """The lost execution as JSON."""
        return {
            "attempt": self.attempt,
            "how": self.how,
            "worker": self.worker,
            "claimed_at": _iso(self.claimed_at),
            "lost_at": _iso(self.lost_at),
            "taken_over_by": self.taken_over_by,
            "reran": list(self.reran),
        }


@dataclass(frozen=True)
class StepRecord:
    """One checkpoint of the task, read as an agent step."""

    index: int
    """Position in execution (commit) order, from 1."""
    name: str
    """The Absurd checkpoint name (`support__model.request#2`)."""
    kind: StepKind
    agent: str | None
    """The agent name in the step name, or None for a step of the task's own code."""
    run_ordinal: int | None
    """Which run of that agent in the task (1 for `support__…`, 2 for `support~2__…`)."""
    model_name: str | None = None
    usage: TokenUsage | None = None
    preview: str | None = None
    """The text of a model response or what it called; the answer of a wait; a value otherwise."""
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_args: Any | None = None
    """The arguments, from the model's tool call part with this `tool_call_id`."""
    result_preview: str | None = None
    error: str | None = None
    """A journaled failure (a tool result that could not be stored as JSON)."""
    executed_by: int | None = None
    """The attempt that ran the step and wrote its checkpoint."""
    replayed_by: tuple[int, ...] = ()
    """Attempts that went past this step later, so were given its recorded result instead of running it.

    Includes the executing attempt itself when that run was claimed again afterwards (resumed after a
    suspension or a wait, or taken over from a dead worker without using an attempt)."""
    committed_at: datetime | None = None
    waited_seconds: float | None = None
    """On the ask step of a wait for input: how long it waited for the answer (so far, while unanswered)."""

    def to_json(self) -> dict[str, Any]:
        """The step as JSON (see the module docstring for the conventions)."""
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "agent": self.agent,
            "run_ordinal": self.run_ordinal,
            "model_name": self.model_name,
            "usage": None if self.usage is None else self.usage.to_json(),
            "preview": self.preview,
            "tool_name": self.tool_name,
            "tool_call_id": self.tool_call_id,
            "tool_args": self.tool_args,
            "result_preview": self.result_preview,
            "error": self.error,
            "executed_by": self.executed_by,
            "replayed_by": list(self.replayed_by),
            "committed_at": _iso(self.committed_at),
            "waited_seconds": None if self.waited_seconds is None else round(self.waited_seconds, 3),
        }


@dataclass(frozen=True)
class AgentRunRecord:
    """The steps of one agent run in the task (`agent=None`: steps outside any agent run)."""

    agent: str | None
    run_ordinal: int | None
    steps: tuple[StepRecord, ...]
    usage: TokenUsage = field(default_factory=TokenUsage)

    def to_json(self) -> dict[str, Any]:
        """The run as JSON, with its steps."""
        return {
            "agent": self.agent,
            "run_ordinal": self.run_ordinal,
            "usage": self.usage.to_json(),
            "steps": [step.to_json() for step in self.steps],
        }


@dataclass(frozen=True)
class TimelineTotals:
    """What the task spent and what its checkpoints saved."""

    tokens_spent: TokenUsage
    """Usage of every model request that ran (each once, whichever attempt ran it)."""
    tokens_saved: TokenUsage
    """Usage of model requests replayed on later attempts: what restarting from scratch would have paid again."""
    steps: int
    steps_replayed: int
    """Steps that at least one later attempt replayed."""
    waiting_seconds: float
    """Time spent waiting for input (ask to answer, or until now while unanswered) and sleeping (graph sleeps)."""

    def to_json(self) -> dict[str, Any]:
        """The totals as JSON."""
        return {
            "tokens_spent": self.tokens_spent.to_json(),
            "tokens_saved": self.tokens_saved.to_json(),
            "steps": self.steps,
            "steps_replayed": self.steps_replayed,
            "waiting_seconds": round(self.waiting_seconds, 3),
        }


@dataclass(frozen=True)
class TaskTimeline:
    """What a durable task did: the task, its attempts, its steps grouped by agent run, and totals."""

    task_id: str
    queue: str
    task_name: str
    state: str
    params: Any
    headers: dict[str, Any]
    result: Any | None
    failure: Any | None
    enqueued_at: datetime | None
    started_at: datetime | None
    cancelled_at: datetime | None
    max_attempts: int | None
    attempts: tuple[AttemptRecord, ...]
    runs: tuple[AgentRunRecord, ...]
    totals: TimelineTotals
    forked_from: str | None = None
    """The task this one was forked from (reused its checkpoints), when it records one."""
    lost_executions: tuple[LostExecution, ...] = ()
    """Executions that died with their worker (taken over, or their lease expired), oldest first."""
    known_to_workers: bool | None = None
    """False when the queue's workers recorded the tasks they run and none runs this one (no worker knows
    this task: it would wait forever); None when no worker of this package recorded its tasks there."""
    parent: ParentRecord | None = None
    """The task that spawned this one with `run_as_child`, if any."""
    children: tuple[ChildTaskRecord, ...] = ()
    """The child tasks this task spawned with `run_as_child`, in spawn order."""

    @property
    def total_usage(self) -> TokenUsage:
        """Tokens spent by this task and all its descendants (children, theirs, ...)."""
        total = self.totals.tokens_spent
        for child in self.children:
            total += child.usage
        return total

    @property
    def steps(self) -> tuple[StepRecord, ...]:
        """Every step in execution order, across agent runs."""
        return tuple(sorted((step for run in self.runs for step in run.steps), key=lambda step: step.index))

    def to_json(self) -> dict[str, Any]:
        """The timeline as JSON: the `inspect --json` output."""
        return {
            "format": JSON_FORMAT_VERSION,
            "task_id": self.task_id,
            "queue": self.queue,
            "task_name": self.task_name,
            "state": self.state,
            "params": self.params,
            "headers": self.headers,
            "result": self.result,
            "failure": self.failure,
            "enqueued_at": _iso(self.enqueued_at),
            "started_at": _iso(self.started_at),
            "cancelled_at": _iso(self.cancelled_at),
            "max_attempts": self.max_attempts,
            "forked_from": self.forked_from,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "lost_executions": [lost.to_json() for lost in self.lost_executions],
            "known_to_workers": self.known_to_workers,
            "runs": [run.to_json() for run in self.runs],
            "totals": self.totals.to_json(),
            "parent": None if self.parent is None else self.parent.to_json(),
            "children": [child.to_json() for child in self.children],
            "total_usage": self.total_usage.to_json(),
        }


@dataclass(frozen=True)
class TaskSummary:
    """One row of `list_tasks` / `pydantic-ai-absurd tasks`."""

    task_id: str
    queue: str
    task_name: str
    state: str
    attempts: int
    enqueued_at: datetime
    age_seconds: float
    """Seconds since the task was spawned, by the database's clock."""
    last_step: str | None
    """The name of the latest checkpoint written."""
    last_step_at: datetime | None
    claimed_by: str | None
    known_to_workers: bool | None = None
    """As `TaskTimeline.known_to_workers`: False when no worker of the queue runs this task name."""

    def to_json(self) -> dict[str, Any]:
        """The row as JSON (one element of `tasks --json`'s `"tasks"`)."""
        return {
            "task_id": self.task_id,
            "queue": self.queue,
            "task_name": self.task_name,
            "state": self.state,
            "attempts": self.attempts,
            "enqueued_at": _iso(self.enqueued_at),
            "age_seconds": round(self.age_seconds, 3),
            "last_step": self.last_step,
            "last_step_at": _iso(self.last_step_at),
            "claimed_by": self.claimed_by,
            "known_to_workers": self.known_to_workers,
        }
