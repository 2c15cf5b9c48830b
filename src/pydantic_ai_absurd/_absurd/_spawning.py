"""The options a spawn sends, worked out as `AsyncAbsurd.spawn` works them out, for spawns we send in our own SQL.

A durable child task is spawned by our own statement (it writes the parent link in the same statement), yet it must
get what `absurd.spawn` would give it: the client's `before_spawn` hook (trace headers, the user's own headers) and the
defaults of the task's registration and of the client (max attempts, cancellation policy). Without them Absurd
stores no `max_attempts`, which means a failing child is retried forever.

Uses `AsyncAbsurd._prepare_spawn` (private, absurd-sdk 0.5.1) through `_private.prepared_spawn_options`.
"""

from __future__ import annotations

import inspect
from typing import Any

from absurd_sdk import AsyncAbsurd, SpawnOptions

from ._private import client_hooks, prepared_spawn_options

__all__ = ["spawn_options"]


async def spawn_options(
    absurd: AsyncAbsurd,
    task_name: str,
    params: Any,
    *,
    queue: str,
    idempotency_key: str,
    max_attempts: int | None = None,
) -> dict[str, Any]:
    """The options `absurd.spawn(task_name, params, queue=queue, ...)` would send to `absurd.spawn_task`.

    The client's `before_spawn` hook runs first (sync or async), then the registration's and the client's defaults
    fill what neither the call nor the hook set. The hook may not move the task to another queue nor change the
    idempotency key: the caller waits on `queue` and relies on the key to spawn once.
    """
    options: SpawnOptions = {"queue": queue, "idempotency_key": idempotency_key}
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    hook = client_hooks(absurd).get("before_spawn")
    if hook is not None:
        result = hook(task_name, params, options)
        options = await result if inspect.isawaitable(result) else result
    return prepared_spawn_options(absurd, task_name, options, queue=queue, idempotency_key=idempotency_key)
