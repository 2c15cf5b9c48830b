"""The `init` and `dev` subcommands: install Absurd's schema, run a local embedded Postgres."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import Any

from . import _output
from ._options import add_database_option


def add_parsers(subparsers: Any) -> None:
    """Add `init` and `dev` to the CLI."""
    init = subparsers.add_parser("init", help="install or migrate the Absurd schema and create queues")
    add_database_option(init)
    init.add_argument("--queue", "-q", metavar="NAME", action="append", help="queue to create (repeatable)")
    init.set_defaults(handler=_cmd_init)

    dev = subparsers.add_parser("dev", help="run a local embedded Postgres with Absurd until Ctrl-C")
    dev.add_argument("--queue", "-q", metavar="NAME", action="append", help="queue to create (default: 'default')")
    dev.add_argument("--data-dir", metavar="PATH", help="server directory (default: per-user data dir)")
    dev.add_argument("--db-name", default="absurd", help="database name (default: absurd)")
    dev.set_defaults(handler=_cmd_dev)


def _cmd_init(args: argparse.Namespace) -> int:
    from ..schema import setup_sync

    info = setup_sync(args.database, queues=args.queue or ())
    for line in info.describe():
        _output.echo(line)
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from ..embedded import EmbeddedPostgres, default_embedded_dir
    from ..schema import setup_sync

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
                _output.echo(line)
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
