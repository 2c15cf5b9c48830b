"""Chaining Absurd client hooks: ours run after the user's, whether the user's hook is sync or async."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from absurd_sdk import AbsurdHooks, SpawnOptions

__all__ = ["chain_before_spawn"]

SpawnEdit = Callable[[SpawnOptions], SpawnOptions]
"""What our `before_spawn` does to the options the user's hook returned."""


def chain_before_spawn(hooks: AbsurdHooks | None, then: SpawnEdit) -> AbsurdHooks:
    """A copy of `hooks` whose `before_spawn` runs the existing one first, then `then`; other hooks are kept.

    The chained hook stays synchronous (usable by the blocking `Absurd` client) unless the existing hook
    returns an awaitable: then it returns a coroutine, which `AsyncAbsurd.spawn` awaits.
    """
    base: dict[str, Any] = dict(hooks or {})
    previous = cast("Callable[[str, Any, SpawnOptions], Any] | None", base.get("before_spawn"))

    async def finish(pending: Awaitable[SpawnOptions]) -> SpawnOptions:
        return then(await pending)

    def before_spawn(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions | Awaitable[SpawnOptions]:
        if previous is None:
            return then(options)
        result = previous(task_name, params, options)
        if inspect.isawaitable(result):
            return finish(cast("Awaitable[SpawnOptions]", result))
        return then(cast(SpawnOptions, result))

    base["before_spawn"] = before_spawn
    return cast(AbsurdHooks, base)
