"""The `worker` subcommand: load the user's `AsyncAbsurd` client and run a worker for it."""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from absurd_sdk import AsyncAbsurd

from .._text import visible, with_article
from ..errors import WorkerTargetError
from ._options import CommandLineError, add_database_option, add_queue_option, at_least


def load_client(target: str) -> AsyncAbsurd | Callable[[], Any]:
    """Import `module:attribute` (cwd on `sys.path`) and return the `AsyncAbsurd` or a factory for one.

    Raises `WorkerTargetError` with a one-line message when the target cannot be loaded.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise WorkerTargetError(
            f"Worker target {target!r} is not MODULE:ATTRIBUTE; e.g. `pydantic-ai-absurd worker myapp.tasks:absurd`."
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    obj: Any = _import_module(module_name, target)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise WorkerTargetError(
                f"Module {module_name!r} has no attribute {attribute!r} (worker target {target!r})."
            ) from err
    if isinstance(obj, AsyncAbsurd):
        return obj
    if callable(obj):
        return cast("Callable[[], Any]", obj)
    raise WorkerTargetError(
        f"Worker target {target!r} is {with_article(type(obj).__name__)}, not an absurd_sdk.AsyncAbsurd "
        "(or a function returning one)."
    )


_NESTED_RUN = "cannot be called from a running event loop"


def _import_module(module_name: str, target: str) -> ModuleType:
    with warnings.catch_warnings():
        # The coroutine handed to the refused `asyncio.run(...)` is never awaited: not the user's concern here.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            return importlib.import_module(module_name)
        except ImportError as err:
            raise WorkerTargetError(
                f"Cannot import module {module_name!r} for worker target {target!r}: {err}. "
                "Run the command from your project directory or install the package."
            ) from err
        except RuntimeError as err:
            if _NESTED_RUN not in str(err):
                raise
        # The refused coroutine is in a reference cycle with the error's traceback: collect it while its
        # warning is ignored (only here: a full collection after every successful import costs a large app time).
        gc.collect()
    raise WorkerTargetError(
        f"Module {module_name!r} calls asyncio.run(...) when imported, and the worker imports it inside its "
        'own event loop: put that call under `if __name__ == "__main__":` (worker target '
        f"{target!r})."
    )


async def resolve_client(target: str) -> AsyncAbsurd:
    loaded = load_client(target)
    if isinstance(loaded, AsyncAbsurd):
        return loaded
    made = loaded()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, AsyncAbsurd):
        raise WorkerTargetError(
            f"Worker target {target!r} returned {with_article(type(made).__name__)}, not an absurd_sdk.AsyncAbsurd."
        )
    return made


def add_parsers(subparsers: Any) -> None:
    """Add `worker MODULE:ATTRIBUTE [options]` to the CLI (options left out keep `WorkerConfig`'s defaults)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker for the tasks registered on an AsyncAbsurd client",
        description=(
            "Run the tasks registered on MODULE:ATTRIBUTE (an absurd_sdk.AsyncAbsurd, or a function "
            "returning one). SIGTERM/SIGINT drains in-flight tasks, then hands the rest back to other workers."
        ),
    )
    parser.add_argument("target", metavar="MODULE:ATTRIBUTE", help="e.g. myapp.tasks:absurd")
    parser.add_argument("--concurrency", type=int, help="tasks run at once (default 100)")
    parser.add_argument("--pool-size", type=int, help="connections of the worker's pool (default 10)")
    parser.add_argument("--claim-timeout", type=int, help="lease in seconds (default 10)")
    parser.add_argument("--drain-timeout", type=float, help="seconds to drain after SIGTERM (default 25)")
    parser.add_argument("--poll-interval", type=float, help="seconds between polls (default 0.5)")
    parser.add_argument("--worker-id", help="worker name in logs and claimed_by (default host:pid)")
    add_queue_option(parser, "queue to work (default: the client's queue)")
    add_database_option(parser, "Postgres connection string (default: the client's)")
    parser.add_argument("--health-file", help="file touched after every successful poll")
    parser.add_argument(
        "--no-fast-takeover",
        dest="fast_takeover",
        action="store_false",
        default=None,
        help="hold no liveness lock: tasks of a dead worker resume only when their lease expires",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.set_defaults(handler=worker_command, validate=_check_ranges)


_CONFIG_OPTIONS = (
    "concurrency",
    "pool_size",
    "claim_timeout",
    "drain_timeout",
    "poll_interval",
    "worker_id",
    "queue",
    "health_file",
    "fast_takeover",
)


class _VisibleFormatter(logging.Formatter):
    """Log lines (task names, tool errors) with control characters escaped; tracebacks keep their lines."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), keep_newlines=True)


def _check_ranges(args: argparse.Namespace) -> None:
    at_least("--concurrency", args.concurrency, 1)
    at_least("--pool-size", args.pool_size, 2)
    at_least("--claim-timeout", args.claim_timeout, 1)
    at_least("--drain-timeout", args.drain_timeout, 0)
    at_least("--poll-interval", args.poll_interval, 0, inclusive=False)
    if args.health_file is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.health_file))):
        raise CommandLineError(f"--health-file {args.health_file!r}: its directory does not exist.")


async def worker_command(args: argparse.Namespace) -> int:
    """Run the `worker` subcommand from parsed arguments (the CLI awaits it); returns the exit code."""
    from ..worker import WorkerConfig, run_worker

    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=str(args.log_level).upper(), handlers=[handler])
    given = {name: getattr(args, name) for name in _CONFIG_OPTIONS if getattr(args, name) is not None}
    if args.database is not None:
        given["dsn"] = args.database
    absurd = await resolve_client(args.target)
    try:
        await run_worker(absurd, config=WorkerConfig(**given))
    finally:
        await absurd.close()
    return 0
