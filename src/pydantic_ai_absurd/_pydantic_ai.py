"""The only place where this package touches private names of `pydantic_ai`.

Both are hooks of `BaseDurabilityCapability` (pydantic-ai-slim 2.68 to 2.78), overridden here, checked by
`check_private_names()` when a capability is created and pinned by `tests/unit/compat/test_compat.py`:

- `_stamp_response(response, messages)`: the graph stamps `run_id` / `conversation_id` on a model
  response only after the durable unit returns, so without this override the stored response would
  lack them and a replay would differ from the first run.
- `_reject_runtime_toolsets(toolset)`: the guard against toolsets added at run time. It counts the
  wrapped agent's `@agent.toolset` functions as added after construction, because a capability bound
  at construction never wrapped them. Ours binds on every run (`AbsurdAgent` adds it per run), after
  the decorators ran, so those toolsets *were* wrapped: they are let through, and every other leaf is
  judged by the base guard as before.

And one module-level name, read by `active_run_usage()` for the OpenTelemetry layer (`telemetry.py`),
pinned by `tests/unit/telemetry/test_otel.py`:

- `pydantic_ai._usage_attribution._active`: the `RunUsage` the current agent run span reports as its
  aggregated usage. A resumed attempt takes the usage of its replayed model requests off it, so the agent
  run spans of all attempts together count each request once. Missing, the correction is skipped.

And the wire shape of a tool call's journaled result (`durable_exec._toolset.CallToolResult`, whose variants are
private), read by `is_journaled_failure()` for `durable_transaction`, pinned by `tests/unit/transactions/test_transactions.py`:

- a tool that raised `ModelRetry`, `ToolFailed`, `ApprovalRequired`, `CallDeferred`, a validation error or a
  cancelled sub-run is journaled as an object whose `kind` names it. Its `durable_transaction()` block's rows
  are rolled back then: the tool did not succeed.

And one method of `AgentRunResult`, used by the conversations layer, pinned by
`tests/unit/conversations/test_conversation_turns.py`:

- `AgentRunResult._conversation_saved(revision)`: what `ConversationStore.save(result)` calls so the
  result's `conversation` continues from the saved revision. A durable turn whose save step is replayed
  from its checkpoint calls it too, so the result is the same as on the first attempt. Missing, the
  replayed result keeps the loaded revision.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.durable_exec import BaseDurabilityCapability
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT
from pydantic_ai.toolsets import AbstractToolset, CombinedToolset

from .errors import IncompatibleSdkError

__all__ = [
    "PrivateHooks",
    "active_run_usage",
    "check_private_names",
    "is_journaled_failure",
    "mark_result_saved",
    "missing_private_names",
]

_OVERRIDDEN = ("_stamp_response", "_reject_runtime_toolsets")


def missing_private_names() -> list[str]:
    """The private Pydantic AI names this package relies on that the installed version lacks."""
    missing = [
        f"BaseDurabilityCapability.{name}"
        for name in _OVERRIDDEN
        if not callable(getattr(BaseDurabilityCapability, name, None))
    ]
    if not callable(getattr(AgentRunResult, "_conversation_saved", None)):
        missing.append("AgentRunResult._conversation_saved")
    try:
        from pydantic_ai import _usage_attribution  # pyright: ignore[reportPrivateUsage]

        _usage_attribution._active.get  # pyright: ignore[reportPrivateUsage]  # noqa: B018
    except (ImportError, AttributeError):
        missing.append("pydantic_ai._usage_attribution._active")
    return missing


def check_private_names() -> None:
    """Refuse to run on a Pydantic AI that lacks a private name this package overrides or reads."""
    missing = missing_private_names()
    if missing:
        raise IncompatibleSdkError(
            f"The installed pydantic-ai-slim lacks {', '.join(missing)}, which pydantic-ai-absurd relies on; "
            "install a supported version (see the Compatibility page of the docs)."
        )


def active_run_usage() -> Any | None:
    """The `RunUsage` the innermost agent run span will report (`pydantic_ai._usage_attribution._active`)."""
    try:
        from pydantic_ai import _usage_attribution  # pyright: ignore[reportPrivateUsage]

        return _usage_attribution._active.get()  # pyright: ignore[reportPrivateUsage]
    except (ImportError, AttributeError):  # pragma: no cover - a Pydantic AI without it
        return None


class PrivateHooks(BaseDurabilityCapability[AgentDepsT]):
    """`BaseDurabilityCapability` with this package's overrides of its private hooks."""

    _bound_leaves: frozenset[int] = frozenset()

    def remember_bound_leaves(self, agent: AbstractAgent[AgentDepsT, Any]) -> None:
        """Record the leaf toolsets `agent` has now, all of which binding wraps (decorator toolsets included)."""
        leaves: set[int] = set()
        for toolset in agent.toolsets:
            toolset.apply(lambda leaf: leaves.add(id(leaf)))
        self._bound_leaves = frozenset(leaves)

    def _reject_runtime_toolsets(self, toolset: AbstractToolset[AgentDepsT]) -> None:
        leftovers: list[AbstractToolset[AgentDepsT]] = []

        def collect(leaf: AbstractToolset[AgentDepsT]) -> None:
            if id(leaf) not in self._bound_leaves:
                leftovers.append(leaf)

        toolset.apply(collect)
        if leftovers:
            super()._reject_runtime_toolsets(CombinedToolset(leftovers))  # pyright: ignore[reportPrivateUsage]

    def _stamp_response(self, response: ModelResponse, messages: list[ModelMessage]) -> None:
        if messages:
            final = messages[-1]
            response.run_id = response.run_id or final.run_id
            response.conversation_id = response.conversation_id or final.conversation_id


def mark_result_saved(result: Any, revision: str) -> None:
    """Make `result.conversation` continue from `revision` (`AgentRunResult._conversation_saved`)."""
    saved = getattr(result, "_conversation_saved", None)
    if callable(saved):
        saved(revision)


_JOURNALED_FAILURES = frozenset(
    {"model_retry", "tool_failed", "approval_required", "call_deferred", "validation_error", "run_cancelled"}
)


def is_journaled_failure(payload: object) -> bool:
    """Whether a tool step's encoded result is control flow journaled as a value (`ModelRetry`, ...), not a return."""
    if not isinstance(payload, dict):
        return False
    kind = cast(dict[str, object], payload).get("kind")
    return isinstance(kind, str) and kind in _JOURNALED_FAILURES
