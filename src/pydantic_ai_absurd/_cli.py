"""The `pydantic-ai-absurd` command line: `init`, `dev` (and `worker`, added by `_worker.py`).

Each subcommand sets `handler`: a callable taking the parsed `argparse.Namespace` and returning
an exit code (`int`/`None`) or an awaitable of one (run with `asyncio.run`). Errors derived from
`PydanticAIAbsurdError` print one line to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ._errors import PydanticAIAbsurdError

__all__ = ["build_parser", "main"]

_PROG = "pydantic-ai-absurd"


def _cmd_init(args: argparse.Namespace) -> int:
    from ._schema import setup_sync

    info = setup_sync(args.database, queues=args.queue or ())
    for line in info.describe():
        print(line)
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from ._embedded import EmbeddedPostgres, default_embedded_dir
    from ._schema import setup_sync

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = EmbeddedPostgres(args.data_dir or default_embedded_dir(), database=args.db_name)
    try:
        server.start()
        try:
            info = setup_sync(server.dsn, queues=args.queue or ["default"])
            state = "Started" if server.started else "Attached to running"
            print(f"{state} embedded Postgres in {server.root} (pid {server.pid})")
            for line in info.describe():
                print(line)
            print(f"DSN: {server.dsn}")
            print(f"export ABSURD_DATABASE_URL='{server.dsn}'")
            print("Press Ctrl-C to stop.", flush=True)
            while not stop.wait(0.2):
                pass
        finally:
            stopped = server.close()
            print(
                "Stopped embedded Postgres." if stopped else "Left embedded Postgres running (still used by others).",
                flush=True,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Durable Pydantic AI agents on Postgres (Absurd).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = subparsers.add_parser("init", help="install or migrate the Absurd schema and create queues")
    init.add_argument(
        "--database",
        "-d",
        metavar="DSN",
        help="Postgres connection string (default: $ABSURD_DATABASE_URL, $PGDATABASE, postgresql://localhost/absurd)",
    )
    init.add_argument("--queue", "-q", metavar="NAME", action="append", help="queue to create (repeatable)")
    init.set_defaults(handler=_cmd_init)

    dev = subparsers.add_parser("dev", help="run a local embedded Postgres with Absurd until Ctrl-C")
    dev.add_argument("--queue", "-q", metavar="NAME", action="append", help="queue to create (default: 'default')")
    dev.add_argument("--data-dir", metavar="PATH", help="server directory (default: per-user data dir)")
    dev.add_argument("--db-name", default="absurd", help="database name (default: absurd)")
    dev.set_defaults(handler=_cmd_dev)

    # ---- `worker` subcommand: provided by _worker.py (`add_worker_subcommand(subparsers)`), which
    # must call `set_defaults(handler=...)` on its parser (handler may be async). Imported lazily
    # so the CLI works without it; errors inside _worker.py itself are not hidden.
    if importlib.util.find_spec(f"{__package__}._worker") is not None:
        worker_module = importlib.import_module(f"{__package__}._worker")
        add_worker = getattr(worker_module, "add_worker_subcommand", None)
        if add_worker is not None:
            add_worker(subparsers)
    # ---- end of `worker` subcommand
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pydantic-ai-absurd` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: Any = args.handler(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except PydanticAIAbsurdError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


async def _await(awaitable: Any) -> Any:
    return await awaitable


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
