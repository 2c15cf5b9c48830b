"""The plugin's tests use the plugin's own `absurd_queue` (a new queue per test), not the unit tests' queue pool."""

from __future__ import annotations

from pydantic_ai_absurd.testing.pytest_plugin import absurd_queue

__all__ = ["absurd_queue"]
