"""The private upstream details this package relies on, each isolated here and pinned by `tests/test_compat.py`.

DESIGN.md §5 lists them: `AsyncTaskContext`'s claim timeout (the lease keeper heartbeats at a third of it)
and the layout of the `cache_key` a `CallableOperationBackend.execute` receives (searched by type, never by
position). The `_stamp_response` hook is overridden in `_durability.py` and pinned by the same test module.
"""

from __future__ import annotations

from absurd_sdk import AsyncTaskContext

DEFAULT_CLAIM_TIMEOUT = 120
"""Absurd's own default claim timeout, used if a context does not expose one."""


def claim_timeout_of(task_ctx: AsyncTaskContext) -> float:
    """The claim timeout, in seconds, the worker claimed this task run with."""
    value = getattr(task_ctx, "_claim_timeout", None)
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return float(DEFAULT_CLAIM_TIMEOUT)
