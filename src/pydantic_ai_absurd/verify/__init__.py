"""Deploy safety: verify recorded runs against new code before a deploy, and fork a run from any step.

- `verify_replay(absurd, task_ids=None, ...)` replays recorded tasks against the handlers registered on
  `absurd` in a sandbox that executes nothing, and reports per task ok or the first divergence.
- `recorded_tasks`, `export_recorded`, `import_recorded` read recorded tasks from a queue and keep them as
  JSON fixtures (`pydantic_ai_absurd.testing.assert_replays` verifies those in a test suite).
- `fork_task(absurd, task_id, *, at_step, params=...)` starts a new task that reuses the source task's first
  `at_step` steps; `fork_origin(headers)` reads where a task was forked from.
"""

from __future__ import annotations

from ._fork import FORK_HEADER, ForkOrigin, fork_origin, fork_points_of, fork_task
from ._records import DEFAULT_STATES, RecordedStep, RecordedTask, export_recorded, import_recorded, recorded_tasks
from ._replay import Handler, ProgressCallback, replay_recorded, verify_replay
from ._report import Divergence, TaskReplay, VerifyReport

__all__ = [
    "DEFAULT_STATES",
    "FORK_HEADER",
    "Divergence",
    "ForkOrigin",
    "Handler",
    "ProgressCallback",
    "RecordedStep",
    "RecordedTask",
    "TaskReplay",
    "VerifyReport",
    "export_recorded",
    "fork_origin",
    "fork_points_of",
    "fork_task",
    "import_recorded",
    "recorded_tasks",
    "replay_recorded",
    "verify_replay",
]
