"""What a recorded step name says about its place in a run: its lane, its batch, its tool call.

Step names (`<agent>[~N]__<operation>[:label][@tool call id]`, numbered `#N` by Absurd when repeated) are
read by `StepName.parse`; tool call IDs are unescaped, as inspection reads them.
A *lane* is one agent run (the agent segment); steps of one lane happen in order, except the tool steps
of one model response (a *batch*), which run in parallel and commit in any order. Steps a handler writes
itself with `ctx.step(...)` have no agent segment: each is a lane of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .._step_names import ExternalEventStep, ModelStep, StepName

__all__ = ["StepPlace", "fork_points", "places"]


def lane_of(checkpoint_name: str) -> str:
    """The agent run a step belongs to (`agent`, `agent~2`), or the step itself for a handler's own step."""
    prefix = StepName.parse(checkpoint_name).run_prefix
    return checkpoint_name if prefix is None else prefix


def is_model_request(checkpoint_name: str) -> bool:
    """Whether the step is a model request (plain or streamed)."""
    operation = StepName.parse(checkpoint_name).operation
    return isinstance(operation, ModelStep) and operation.operation in {"request", "request_stream"}


def tool_call_of(checkpoint_name: str) -> str | None:
    """The tool call ID a tool-scoped step carries (tool call, validation, capability, tool event), if any."""
    return StepName.parse(checkpoint_name).tool_call_id


def wait_of(checkpoint_name: str) -> str | None:
    """The ask step of the durable external-event wait a step belongs to, if it is one of its steps.

    The N-th ask of a wait name (`...:approve#2`) goes with its N-th event (`...:approve.event#2`).
    """
    step = StepName.parse(checkpoint_name)
    if not isinstance(step.operation, ExternalEventStep):
        return None
    return replace(step, operation=replace(step.operation, part="ask")).format()


@dataclass(frozen=True)
class StepPlace:
    """Where a recorded step sits: position in write order, lane, batch (model requests before it in its lane)."""

    name: str
    position: int
    lane: str
    batch: int
    tool_call: str | None


def places(names: Sequence[str]) -> list[StepPlace]:
    """The place of every recorded step, `names` being in write order."""
    requests: dict[str, int] = {}
    result: list[StepPlace] = []
    for position, name in enumerate(names):
        lane = lane_of(name)
        result.append(StepPlace(name, position, lane, requests.get(lane, 0), tool_call_of(name)))
        if is_model_request(name):
            requests[lane] = requests.get(lane, 0) + 1
    return result


def fork_points(names: Sequence[str]) -> list[int]:
    """The step counts a fork may copy: 0..len(names), minus cuts inside a parallel batch or a wait.

    A cut inside a batch of several tool calls would copy an arbitrary half of it (parallel steps commit in
    any order); a cut between a wait's ask and its event would wait on a token nobody was given.
    """
    spans: list[tuple[int, int]] = []
    batches: dict[tuple[str, int], list[StepPlace]] = {}
    for place in places(names):
        if place.tool_call is not None:
            batches.setdefault((place.lane, place.batch), []).append(place)
    for members in batches.values():
        if len({member.tool_call for member in members}) > 1:
            spans.append((members[0].position, members[-1].position))
    waits: dict[str, list[int]] = {}
    for position, name in enumerate(names):
        ask = wait_of(name)
        if ask is not None:
            waits.setdefault(ask, []).append(position)
    spans += [(min(positions), max(positions)) for positions in waits.values() if len(positions) > 1]
    return [cut for cut in range(len(names) + 1) if not any(first < cut <= last for first, last in spans)]


def describe_choices(points: Sequence[int]) -> str:
    """`0-3, 5, 7-9` for the points 0, 1, 2, 3, 5, 7, 8, 9."""
    ranges: list[str] = []
    start = previous = None
    for point in points:
        if start is None or previous is None:
            start = previous = point
        elif point == previous + 1:
            previous = point
        else:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = previous = point
    if start is not None and previous is not None:
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
    return ", ".join(ranges)
