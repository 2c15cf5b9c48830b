"""A task context that reaches no database: the SDK's storage calls, routed to public-named hooks.

`OfflineTaskContext` overrides four private methods of `AsyncTaskContext` (absurd-sdk 0.5.1), checked by
`check_offline_context_names()` and pinned by `tests/unit/verify/test_verify_sandbox.py`:

- `_get_checkpoint_name`: each checkpoint name the SDK's counter hands out is reported to
  `checkpoint_name_given`;
- `_lookup_checkpoint`, `_persist_checkpoint`, `_schedule_run_after`: every checkpoint read, checkpoint write
  and reschedule made by the SDK's own `begin_step`, `complete_step`, `sleep_until` and `await_event` goes
  through one of these, so routing them to `lookup_checkpoint`, `persist_checkpoint` and `schedule_run_after`
  leaves the subclass (deploy verification's sandbox) in control of everything the context would store.
"""

from __future__ import annotations

from typing import Any, NoReturn

from absurd_sdk import AsyncTaskContext

__all__ = ["OfflineTaskContext"]


class OfflineTaskContext(AsyncTaskContext):
    """An `AsyncTaskContext` whose checkpoint names, reads, writes and reschedules go to the hooks below.

    Build one with `offline_task_context`. The hooks refuse by default; a subclass overrides them.
    """

    def _get_checkpoint_name(self, name: str) -> str:
        checkpoint_name = super()._get_checkpoint_name(name)
        self.checkpoint_name_given(checkpoint_name)
        return checkpoint_name

    async def _lookup_checkpoint(self, checkpoint_name: str) -> object:
        return await self.lookup_checkpoint(checkpoint_name)

    async def _persist_checkpoint(self, checkpoint_name: str, value: Any) -> None:
        await self.persist_checkpoint(checkpoint_name, value)

    async def _schedule_run_after(self, seconds: float) -> None:
        await self.schedule_run_after(seconds)

    def checkpoint_name_given(self, checkpoint_name: str) -> None:
        """Called with each checkpoint name as it is handed out (override it)."""

    def next_checkpoint_name(self, name: str) -> str:
        """The checkpoint name the next step called `name` gets (advances the SDK's counter)."""
        return self._get_checkpoint_name(name)

    async def lookup_checkpoint(self, checkpoint_name: str) -> object:
        """Called where the SDK would read a checkpoint from the database (override it)."""
        raise RuntimeError(f"an offline task context cannot look up checkpoint {checkpoint_name!r}")

    async def persist_checkpoint(self, checkpoint_name: str, value: Any) -> NoReturn:
        """Called where the SDK would write a checkpoint (override it)."""
        raise RuntimeError(f"an offline task context cannot write checkpoint {checkpoint_name!r}")

    async def schedule_run_after(self, seconds: float) -> NoReturn:
        """Called where the SDK would put the run to sleep for `seconds` (override it)."""
        raise RuntimeError("an offline task context cannot schedule its run")
