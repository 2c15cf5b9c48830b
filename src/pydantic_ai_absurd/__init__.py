"""Durable execution for Pydantic AI agents on Postgres alone, through the Absurd workflow engine.

The names here are what an application needs first; specialised ones live in their module:
`pydantic_ai_absurd.worker` (worker settings, retry policy), `pydantic_ai_absurd.client` (spawning and
results), `pydantic_ai_absurd.schema` (schema and queues), `pydantic_ai_absurd.embedded` (a local
Postgres for development) and `pydantic_ai_absurd.testing` (pytest plugin and helpers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._agent import AbsurdAgent
    from ._durability import TOOL_METADATA_KEY, AbsurdDurability
    from .errors import NonRetryableError, PydanticAIAbsurdError, ReplayDivergenceError, UnserializableResultError
    from ._waits import fail_event_token, resolve_event_token
    from .schema import setup
    from .worker import WorkerConfig, run_worker

# Loaded on first use, so `pydantic-ai-absurd init --help` does not import all of Pydantic AI.
_EXPORTS: dict[str, str] = {
    "AbsurdAgent": "._agent",
    "AbsurdDurability": "._durability",
    "TOOL_METADATA_KEY": "._durability",
    "NonRetryableError": ".errors",
    "PydanticAIAbsurdError": ".errors",
    "ReplayDivergenceError": ".errors",
    "UnserializableResultError": ".errors",
    "fail_event_token": "._waits",
    "resolve_event_token": "._waits",
    "setup": ".schema",
    "WorkerConfig": ".worker",
    "run_worker": ".worker",
}

__all__ = [
    "TOOL_METADATA_KEY",
    "AbsurdAgent",
    "AbsurdDurability",
    "NonRetryableError",
    "PydanticAIAbsurdError",
    "ReplayDivergenceError",
    "UnserializableResultError",
    "WorkerConfig",
    "fail_event_token",
    "resolve_event_token",
    "run_worker",
    "setup",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
