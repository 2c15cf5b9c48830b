"""Answers checked against the stored request before anything is sent, and merged into its decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied

from ..errors import InvalidAnswerError, one_line, validation_summary

__all__ = ["approval_results", "is_complete", "merge", "results_json"]

RESULTS_ADAPTER: TypeAdapter[DeferredToolResults] = TypeAdapter(DeferredToolResults)

_FIELDS = ("approvals", "calls", "metadata", "answered_by")


def _ids(values: Sequence[str]) -> str:
    return ", ".join(repr(value) for value in sorted(values))


def approval_results(
    token: str,
    remaining: DeferredToolRequests,
    *,
    decision: ToolApproved | ToolDenied,
    tool_call_ids: Sequence[str] | None,
    answered_by: str | None,
) -> DeferredToolResults:
    """`decision` for the given pending approvals (every pending approval when `tool_call_ids` is None)."""
    pending = [call.tool_call_id for call in remaining.approvals]
    if not pending:
        raise InvalidAnswerError(
            f"Request {token!r} has no pending approval (it waits for external results: "
            f"{_ids([c.tool_call_id for c in remaining.calls])}); answer those with `answer`."
        )
    if isinstance(tool_call_ids, str):
        raise InvalidAnswerError(
            f"tool_call_ids must be a list of tool call IDs, not the str {tool_call_ids!r}; pass [{tool_call_ids!r}]."
        )
    chosen = pending if tool_call_ids is None else list(dict.fromkeys(tool_call_ids))
    if not chosen:
        raise InvalidAnswerError(f"No tool call IDs given for request {token!r}; pending approvals: {_ids(pending)}.")
    if unknown := set(chosen) - set(pending):
        raise InvalidAnswerError(
            f"Tool call IDs {_ids(list(unknown))} are not pending approvals of request {token!r} "
            f"(pending approvals: {_ids(pending)})."
        )
    return DeferredToolResults(
        approvals=dict.fromkeys(chosen, decision),
        answered_by={} if answered_by is None else dict.fromkeys(chosen, answered_by),
    )


def results_json(token: str, remaining: DeferredToolRequests, results: DeferredToolResults) -> dict[str, Any]:
    """`results` as JSON, refusing any tool call ID that is not pending in the right kind."""
    if not isinstance(results, DeferredToolResults):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise InvalidAnswerError(
            f"An answer to request {token!r} must be a DeferredToolResults, not {type(results).__name__}."
        )
    data = _checked(token, results)
    results = RESULTS_ADAPTER.validate_python(data)
    approval_ids = {call.tool_call_id for call in remaining.approvals}
    call_ids = {call.tool_call_id for call in remaining.calls}
    checks = (
        ("approvals", set(results.approvals), approval_ids, "pending approvals"),
        ("calls", set(results.calls), call_ids, "pending external calls"),
        ("metadata", set(results.metadata), approval_ids | call_ids, "pending calls"),
        ("answered_by", set(results.answered_by), approval_ids | call_ids, "pending calls"),
    )
    for field_name, given, allowed, what in checks:
        if extra := given - allowed:
            raise InvalidAnswerError(
                f"`{field_name}` of the answer to request {token!r} names tool call IDs {_ids(list(extra))} that "
                f"are not {what} (pending: {_ids(list(allowed)) or 'none'})."
            )
    if not results.approvals and not results.calls:
        raise InvalidAnswerError(
            f"The answer to request {token!r} decides no call; pending: {_ids(list(approval_ids | call_ids))}."
        )
    return data


def _checked(token: str, results: DeferredToolResults) -> dict[str, Any]:
    """`results` as JSON, validated: a dataclass instance is not checked when built (`calls=5`, `message=1`)."""
    try:
        data = RESULTS_ADAPTER.dump_python(results, mode="json", warnings=False)
        RESULTS_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidAnswerError(
            f"The answer to request {token!r} is not a valid DeferredToolResults: {validation_summary(exc)}."
        ) from None
    except (TypeError, ValueError) as exc:  # a value with no JSON form
        raise InvalidAnswerError(
            f"The answer to request {token!r} is not a valid DeferredToolResults: {one_line(exc)}."
        ) from None
    return cast(dict[str, Any], data)


def merge(decisions: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """`decisions` updated with `answer` (both `DeferredToolResults` JSON)."""
    merged: dict[str, Any] = {}
    for name in _FIELDS:
        merged[name] = {
            **cast(dict[str, Any], decisions.get(name) or {}),
            **cast(dict[str, Any], answer.get(name) or {}),
        }
    return merged


def is_complete(requests: DeferredToolRequests, decisions: dict[str, Any]) -> bool:
    """Whether every call of `requests` has a decision, so the run can continue."""
    approvals = cast(dict[str, Any], decisions.get("approvals") or {})
    calls = cast(dict[str, Any], decisions.get("calls") or {})
    return all(c.tool_call_id in approvals for c in requests.approvals) and all(
        c.tool_call_id in calls for c in requests.calls
    )
