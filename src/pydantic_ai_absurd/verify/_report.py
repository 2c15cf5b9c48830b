"""What verification found: per task, ok or the first divergence."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .._text import visible

__all__ = ["Divergence", "TaskReplay", "VerifyReport"]

ReplayStatus = Literal["ok", "diverged", "error"]


@dataclass(frozen=True)
class Divergence:
    """The first step where the code asks for something other than what the recording has."""

    step: str
    """The checkpoint name (with Absurd's `#N`) the divergence was found at."""
    recorded: str
    """What the recording has there (the recorded request's summary, or the step the recording has next)."""
    requested: str
    """What the code asks for now."""
    source: str | None = None
    """`file:line` of the user code that asked for the step: the tool's function for a tool step, else the
    registered task handler."""
    diff: str | None = None
    """A unified diff of the recorded request and the new one (`recorded` then `now`), when the recording
    holds the request text (checkpoints written by this version and later)."""

    def describe(self) -> str:
        """One line (step, recorded, requested, source), then the diff of the two requests, indented."""
        where = f" ({self.source})" if self.source else ""
        line = f"step {self.step!r}{where}: recorded {self.recorded}; the code now asks for {self.requested}"
        if not self.diff:
            return line
        return "\n".join([line, *(f"    {diff_line}" for diff_line in self.diff.splitlines())])


@dataclass(frozen=True)
class TaskReplay:
    """The verdict for one recorded task."""

    task_id: str
    task_name: str
    status: ReplayStatus
    """`ok` (replays cleanly), `diverged` (see `divergence`) or `error` (see `error`)."""
    replayed_steps: int
    """How many recorded steps replayed."""
    recorded_steps: int
    """How many steps the recording has."""
    next_step: str | None = None
    """The first step the recording lacks, which would run live after the deploy (`None` if the handler
    finished, or the replay did not get that far)."""
    divergence: Divergence | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the task replays cleanly on the code verified."""
        return self.status == "ok"

    @property
    def step(self) -> str | None:
        """The step of the divergence, if any (`divergence.step`)."""
        return self.divergence.step if self.divergence is not None else None

    @property
    def recorded(self) -> str | None:
        """What the recording has at the divergence, if any (`divergence.recorded`)."""
        return self.divergence.recorded if self.divergence is not None else None

    @property
    def requested(self) -> str | None:
        """What the code asks for at the divergence, if any (`divergence.requested`)."""
        return self.divergence.requested if self.divergence is not None else None

    @property
    def source(self) -> str | None:
        """`file:line` of the code that asked for the divergent step, if known (`divergence.source`)."""
        return self.divergence.source if self.divergence is not None else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict of this verdict (what `verify --json` prints per task)."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def describe(self) -> str:
        """One line for this task."""
        head = f"{self.task_id} {self.task_name}"
        if self.divergence is not None:
            return f"DIVERGED {head}: {self.divergence.describe()}"
        if self.error is not None:
            return f"ERROR    {head}: {self.error}"
        tail = (
            f"next step {self.next_step!r} runs live"
            if self.next_step is not None
            else "the handler finishes on the recording"
        )
        return f"ok       {head}: {self.replayed_steps}/{self.recorded_steps} steps replay; {tail}"


@dataclass(frozen=True)
class VerifyReport:
    """The verdicts for every task verified."""

    tasks: tuple[TaskReplay, ...]

    @property
    def ok(self) -> bool:
        """Whether every task replays cleanly (also true when there was nothing to verify)."""
        return all(task.ok for task in self.tasks)

    @property
    def failures(self) -> tuple[TaskReplay, ...]:
        """The tasks that diverged or failed to replay."""
        return tuple(task for task in self.tasks if not task.ok)

    def __iter__(self) -> Iterator[TaskReplay]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: str) -> TaskReplay | None:
        """The verdict for `task_id`, if it was verified."""
        return next((task for task in self.tasks if task.task_id == str(task_id)), None)

    def to_json(self) -> dict[str, Any]:
        """`{"ok": ..., "tasks": [...]}`, JSON-compatible (what `verify --json` prints)."""
        return {"ok": self.ok, "tasks": [task.to_json() for task in self.tasks]}

    def describe(self) -> str:
        """One line per task, then a summary line; control characters (newlines too) are escaped."""
        lines = [visible(task.describe()) for task in self.tasks]
        failed = len(self.failures)
        lines.append(
            f"{len(self.tasks)} task(s) verified: {len(self.tasks) - failed} ok, {failed} not ok"
            if self.tasks
            else "no recorded task to verify"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()
