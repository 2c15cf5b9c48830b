"""`_absurd.chain_before_spawn`: our `before_spawn` runs after the user's, sync or async (no database)."""

from __future__ import annotations

import inspect
from typing import Any

from absurd_sdk import SpawnOptions

from pydantic_ai_absurd._absurd import chain_before_spawn
from pydantic_ai_absurd.worker import AGENT_RETRY_STRATEGY, agent_retry_hooks


def _tag(options: SpawnOptions) -> SpawnOptions:
    return {**options, "max_attempts": 7}


def test_without_a_user_hook_the_chain_stays_sync() -> None:
    hooks: dict[str, Any] = dict(chain_before_spawn(None, _tag))
    assert hooks["before_spawn"]("t", None, {}) == {"max_attempts": 7}


async def test_an_async_user_hook_runs_first_and_the_chain_is_awaited() -> None:
    seen: list[str] = []

    async def user(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions:
        seen.append(task_name)
        return {**options, "headers": {"tenant": "acme"}}

    kept = object()
    user_hooks: Any = {"before_spawn": user, "wrap_task_execution": kept}
    hooks: dict[str, Any] = dict(chain_before_spawn(user_hooks, _tag))
    result = hooks["before_spawn"]("t", None, {})
    assert inspect.isawaitable(result)
    assert await result == {"headers": {"tenant": "acme"}, "max_attempts": 7}
    assert seen == ["t"]
    assert hooks["wrap_task_execution"] is kept


async def test_agent_retry_hooks_chain_an_async_hook() -> None:
    async def user(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions:
        return {**options, "headers": {"tenant": "acme"}}

    hooks: dict[str, Any] = dict(agent_retry_hooks({"before_spawn": user}))
    options = await hooks["before_spawn"]("t", None, {})
    assert options == {"headers": {"tenant": "acme"}, "retry_strategy": dict(AGENT_RETRY_STRATEGY)}
    explicit: SpawnOptions = {"retry_strategy": {"kind": "fixed", "base_seconds": 1}}
    assert await hooks["before_spawn"]("t", None, explicit) == {**explicit, "headers": {"tenant": "acme"}}
