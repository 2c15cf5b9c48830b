"""A worker process for the OpenTelemetry crash test: `run_worker` with a global tracer provider.

Usage: python -m tests.helpers.apps.otel_worker <dsn> <queue> <state dir>
Every finished span is kept by the SDK's `InMemorySpanExporter` and appended, as a JSON line, to
`<state dir>/spans-<pid>.jsonl`, so the spans a killed process exported survive it. A file
`kill-charge` in the state dir makes the process SIGKILL itself (once) inside the `charge` tool.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from absurd_sdk import AsyncAbsurd
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent

from pydantic_ai_absurd.worker import run_worker
from tests.helpers.apps._common import die_if_armed
from tests.helpers.inspection import billing_agent, register_billing


class FileBackedExporter(InMemorySpanExporter):
    """`InMemorySpanExporter` that also appends each span to a file as it is exported."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a") as file:
            for span in spans:
                parent = span.parent
                file.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": span.context.trace_id if span.context else None,
                            "span_id": span.context.span_id if span.context else None,
                            "parent_id": parent.span_id if parent else None,
                            "attributes": dict(span.attributes or {}),
                        },
                        default=str,
                    )
                    + "\n"
                )
            file.flush()
            os.fsync(file.fileno())
        return super().export(spans)


def main() -> None:
    dsn, queue, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileBackedExporter(state / f"spans-{os.getpid()}.jsonl")))
    trace.set_tracer_provider(provider)
    Agent.instrument_all()

    def maybe_die() -> None:
        die_if_armed(state / "kill-charge")

    absurd = AsyncAbsurd(dsn, queue_name=queue)  # no hooks: the worker applies otel_hooks() by default
    register_billing(absurd, billing_agent(before_charge=maybe_die, charges=state / "charges"))
    # A lease far longer than the test: the replacement resumes the dead worker's run by fast takeover, whatever
    # the time it takes to start on a loaded machine (with a short lease, Absurd would fail the run as expired).
    asyncio.run(run_worker(absurd, claim_timeout=120, poll_interval=0.05, drain_timeout=5))


if __name__ == "__main__":
    main()
