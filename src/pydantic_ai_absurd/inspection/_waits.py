"""How long each wait for input lasted, from the commit times of its checkpoints (the database's clock).

A wait is an ask step (`<agent>__external_event:<name>`), then the event or timeout step that ended it
(`.event`, written by `absurd.emit_event` when the answer arrives; `.timed_out`). It lasted:

- from the ask's commit to the end step's commit, when the ask handed out a token and an answer came;
- until `open_until` (the database's time now, or when the task ended) while no answer came yet;
- the ask itself when it answered inline (an `ask` that prompts someone and returns the answer): from the
  previous checkpoint's commit (or the run's latest claim, if later) to the ask's commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ._steps import ParsedName

__all__ = ["WaitRow", "wait_durations"]


@dataclass(frozen=True)
class WaitRow:
    """What `wait_durations` needs of one checkpoint, in write order."""

    parsed: ParsedName
    committed_at: datetime
    answered_inline: bool
    """For an ask step: its checkpoint holds the answer (no event was awaited)."""
    claimed_at: datetime | None
    """The latest claim of the run that wrote the checkpoint."""


def wait_durations(rows: Sequence[WaitRow], open_until: datetime | None) -> dict[int, float]:
    """Seconds each wait lasted, keyed by the position (from 0) of its ask step in `rows`."""
    open_asks: dict[tuple[str | None, int | None, str | None], int] = {}
    durations: dict[int, float] = {}
    previous: datetime | None = None
    for position, row in enumerate(rows):
        parsed = row.parsed
        if parsed.kind == "wait_for_input":
            key = (parsed.agent, parsed.run_ordinal, parsed.wait_name)
            if parsed.wait_part == "ask" and row.answered_inline:
                started = previous
                if row.claimed_at is not None and (started is None or started < row.claimed_at <= row.committed_at):
                    started = row.claimed_at
                if started is not None:
                    durations[position] = _seconds(started, row.committed_at)
            elif parsed.wait_part == "ask":
                open_asks[key] = position
            elif key in open_asks:
                asked = open_asks.pop(key)
                durations[asked] = _seconds(rows[asked].committed_at, row.committed_at)
        previous = row.committed_at
    if open_until is not None:
        for asked in open_asks.values():
            durations[asked] = _seconds(rows[asked].committed_at, open_until)
    return durations


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)
