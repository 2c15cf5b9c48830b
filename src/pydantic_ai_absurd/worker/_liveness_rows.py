"""Fast takeover behind a transaction pooler: a liveness row beaten by a thread of the worker.

A session advisory lock proves nothing through PgBouncer in transaction mode (the lock stays on a server
connection that other clients reuse), so there a worker proves it is alive with a row of its own in
`pydantic_ai_absurd.worker_liveness`, updated by one statement every `BEAT_INTERVAL` seconds from a
thread with its own connection (a busy event loop does not delay it). Peers presume it dead when its row
was not beaten for `STALE_AFTER` seconds: they delete the row and hand back the runs claimed in its
identity, in one transaction (`hand_back_runs_of_stale_workers`).

What "alive" means here is weaker than a session lock: a worker that cannot beat for `STALE_AFTER` seconds
(paused with SIGSTOP, cut off from the database) is presumed dead like one whose lease expired. Its next
beat finds no row; it then logs it, claims in a fresh identity and stops the runs it claimed in the old
one without handing them back (`on_lost`: the peer has them). A worker claims in its marked identity only while its last beat is recent (less than
half of `STALE_AFTER` ago), else in its plain worker id (its runs then fall back to lease expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import psycopg

from .._absurd import beat_liveness_row, delete_liveness_row, hold_liveness_row, insert_liveness_row
from .._db import connect
from ..errors import DatabaseConnectionError, one_line

__all__ = ["BEAT_INTERVAL", "ROW_CLAIM_PREFIX", "STALE_AFTER", "RowLiveness", "row_claim_identity"]

logger = logging.getLogger("pydantic_ai_absurd.worker")

ROW_CLAIM_PREFIX = "pydantic-ai-absurd+row:"
"""Prefix of `claimed_by` for the runs of a worker proving liveness with a row (not with a session lock)."""

BEAT_INTERVAL = 0.5
"""Seconds between two beats of a worker's liveness row."""

STALE_AFTER = 2.0
"""Seconds without a beat after which peers presume a worker dead and hand its runs back."""


def row_claim_identity(worker_id: str) -> str:
    """A fresh `claimed_by` for a worker proving liveness with a row: prefix, worker id, random suffix."""
    return f"{ROW_CLAIM_PREFIX}{worker_id}:{secrets.token_hex(4)}"


class RowLiveness:
    """The worker's liveness row, inserted at start, beaten by a daemon thread, deleted at a clean stop."""

    def __init__(
        self,
        dsn: str,
        worker_id: str,
        queue: str,
        *,
        connect_timeout: int,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.identity = row_claim_identity(worker_id)
        self.enabled = False
        self._dsn = dsn
        self._queue = queue
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._last_beat = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def held(self) -> int:
        """1 while the last beat is recent enough to claim in the marked identity, else 0."""
        return int(self.enabled and time.monotonic() - self._last_beat < STALE_AFTER / 2)

    async def start(self) -> bool:
        """Insert the row and start the beating thread; false (with one log line) when the row cannot be written."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._beat, first=True)
        except (psycopg.Error, OSError, DatabaseConnectionError) as err:
            logger.warning(
                "fast takeover disabled: cannot write the liveness row (%s; is `pydantic-ai-absurd init` up to "
                "date?); tasks of this worker are picked up by others only when their lease expires",
                one_line(err, with_type=True),
            )
            self._close_connection()
            return False
        self.enabled = True
        self._thread = threading.Thread(target=self._run, name="pydantic-ai-absurd-liveness", daemon=True)
        self._thread.start()
        return True

    @contextlib.asynccontextmanager
    async def claim_guard(self, conn: psycopg.AsyncConnection[Any], identity: str) -> AsyncGenerator[bool]:
        """A transaction holding the row of `identity` for a claim in it; yields whether the row exists."""
        async with conn.transaction():
            yield await hold_liveness_row(conn, identity)

    async def check(self) -> int:
        """Whether the worker may claim in its marked identity now (1) or not (0); the thread does the beats."""
        return self.held

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close_connection()
            self._conn = connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
        return self._conn

    def _beat(self, *, first: bool = False) -> None:
        sent = time.monotonic()
        conn = self._connection()
        if first:
            insert_liveness_row(conn, self.identity, self._queue)
        elif not beat_liveness_row(conn, self.identity):
            lost = self.identity
            self.identity = row_claim_identity(self.worker_id)
            insert_liveness_row(conn, self.identity, self._queue)
            logger.warning(
                "liveness row of %s was removed by a peer (no beat for %.1fs): its runs were handed back; "
                "claiming as %s from now on",
                lost,
                STALE_AFTER,
                self.identity,
            )
            if self._on_lost is not None and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the event loop is closed: nothing runs any more
                    self._loop.call_soon_threadsafe(self._on_lost, lost)
        self._last_beat = sent

    def _run(self) -> None:
        failing = False
        while not self._stopping.wait(BEAT_INTERVAL):
            try:
                self._beat()
            except (psycopg.Error, OSError, DatabaseConnectionError) as err:
                self._close_connection()
                if not failing:
                    logger.warning("cannot beat the liveness row (%s); retrying", one_line(err, with_type=True))
                failing = True
                continue
            if failing:
                logger.info("liveness row beaten again")
                failing = False

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        """Stop beating and delete the row (a clean stop: this worker's runs were finished or handed back)."""
        self.enabled = False
        self._stopping.set()
        await asyncio.to_thread(self._finish)

    def _finish(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        try:
            delete_liveness_row(self._connection(), self.identity)
        except (psycopg.Error, OSError, DatabaseConnectionError) as err:
            logger.warning("cannot delete the liveness row (%s); peers remove it once stale", one_line(err))
        finally:
            self._close_connection()
