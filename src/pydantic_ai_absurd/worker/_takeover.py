"""Fast takeover: a worker proves it is alive with session locks; peers hand back the runs of dead workers.

Every worker holds a session-level shared advisory lock keyed by its claim identity
(`pg_advisory_lock_shared(hashtextextended(identity, 0))`) on `LOCK_CONNECTIONS` long-lived connections
of its own, and records that identity as `claimed_by` of every run it claims. Postgres releases
session locks when a backend exits; when a worker process dies (SIGKILL, OOM kill, crash) the kernel
closes its sockets and all its backends exit at once, so its lock disappears within milliseconds.

Every second (`_handback.TAKEOVER_CHECK_INTERVAL`) each worker looks for running runs of its queue claimed
by a worker of this package (`claimed_by` starts with `CLAIM_PREFIX`) whose lock nobody holds any more
(`pg_try_advisory_xact_lock` succeeds) and hands them back with `absurd.schedule_run(queue, run_id,
now)`: claimable at once, no attempt used, resumed from their checkpoints. While no worker died that is
one statement. A worker notices a lost lock connection without a statement: the server closes the
socket or writes its termination notice on it (`is_quiet`).

A live worker never loses a run this way: a paused (SIGSTOP) or slow process keeps its connections,
so Postgres keeps its locks; losing one connection leaves the lock held on the other, and the lost
one is reconnected and re-locked at the next check. Behind a pooler in transaction mode (PgBouncer)
session locks do not belong to the client: the worker holds its lock only on connections proven
direct (`_pooler.is_direct_session`: both ends of the client's socket are the backend's), and otherwise
proves liveness with a row beaten about every half second (`_liveness_rows.py`; peers take over after
`STALE_AFTER` seconds without a beat). `start_liveness` picks one of the two. Lease expiry stays the
fallback for lost machines and partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any, cast

import psycopg

from .._absurd import backend_pid, hold_worker_lock, worker_lock_held
from .._db import connect_async, is_quiet
from .._pooler import is_direct_session
from ..errors import DatabaseConnectionError, one_line
from ._liveness_rows import ROW_CLAIM_PREFIX, STALE_AFTER, RowLiveness

__all__ = [
    "CLAIM_PREFIX",
    "LOCK_CONNECTIONS",
    "Liveness",
    "claim_guard",
    "claim_identity",
    "needs_claim_guard",
    "start_liveness",
]

logger = logging.getLogger("pydantic_ai_absurd.worker")

CLAIM_PREFIX = "pydantic-ai-absurd:"
"""Prefix of `claimed_by` for the runs claimed by a worker that holds a liveness lock."""

LOCK_CONNECTIONS = 2
"""Connections each holding the worker's liveness lock: losing one of them does not look like death."""


def claim_identity(worker_id: str) -> str:
    """The `claimed_by` of a worker process: prefix, worker id and a random suffix unique to this process.

    The suffix keeps a restarted worker with the same `worker_id` (a StatefulSet pod) from keeping
    the runs of its dead predecessor alive.
    """
    return f"{CLAIM_PREFIX}{worker_id}:{secrets.token_hex(4)}"


class Liveness:
    """The worker's liveness lock, held on `LOCK_CONNECTIONS` connections and re-taken when one is lost."""

    def __init__(self, dsn: str, identity: str, *, connect_timeout: int, application_name: str) -> None:
        self.identity = identity
        self.enabled = False
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._conns: list[psycopg.AsyncConnection[Any] | None] = [None] * LOCK_CONNECTIONS
        self._pids: list[int | None] = [None] * LOCK_CONNECTIONS
        self._checking = asyncio.Lock()

    @property
    def held(self) -> int:
        """How many of the lock connections hold the lock now (as last checked)."""
        return sum(1 for pid in self._pids if pid is not None)

    async def start(self) -> bool | None:
        """Take the lock on every connection and check that it is really held.

        False (with one log line) when the lock cannot be taken: use leases. None (without a log line)
        when a connection is not proven direct (a transaction-mode pooler?): use a liveness row.
        """
        try:
            first = await self._connect(0)
            if not await is_direct_session(first):
                await first.close()
                return None  # never take a session lock through a pooler: it would stay on a server connection
            await self._lock(0, first)
            for slot in range(1, LOCK_CONNECTIONS):
                await self._lock(slot)
            pooled = await self._looks_pooled()
        except (psycopg.Error, OSError, DatabaseConnectionError) as err:
            logger.warning(
                "fast takeover disabled: cannot hold the liveness lock (%s); tasks of this worker are picked "
                "up by others only when their lease expires",
                one_line(err, with_type=True),
            )
            await self.close()
            return False
        if pooled:
            await self.close()
            return None
        self.enabled = True
        return True

    async def _looks_pooled(self) -> bool:
        for slot, conn in enumerate(self._conns):
            pid = self._pids[slot]
            assert conn is not None and pid is not None
            if not await is_direct_session(conn) or await backend_pid(conn) != pid:
                return True
            if not await worker_lock_held(conn, self.identity, pid):
                return True
        return False

    async def _connect(self, slot: int) -> psycopg.AsyncConnection[Any]:
        return await connect_async(
            self._dsn,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name=f"{self._application_name}{slot}",
        )

    async def _lock(self, slot: int, conn: psycopg.AsyncConnection[Any] | None = None) -> None:
        """Take the lock on `slot`, on `conn` (a new connection of that slot) or on a new one."""
        old = self._conns[slot]
        self._conns[slot] = None
        self._pids[slot] = None
        if old is not None:
            await old.close()
        if conn is None:
            conn = await self._connect(slot)
        try:
            pid = await hold_worker_lock(conn, self.identity)
        except BaseException:
            await conn.close()
            raise
        self._conns[slot] = conn
        self._pids[slot] = pid

    async def check(self) -> int:
        """Check every lock connection; reconnect and re-lock the lost ones; return how many hold the lock.

        Never raises on a database error. The worker calls it before every claim (so it never claims in
        its marked name while holding no lock) and every poll interval. A lock connection on which the
        server has neither closed the socket nor written anything is alive (`is_quiet`: no round trip); one
        the server wrote to is asked for its backend pid.
        """
        if not self.enabled:
            return 0
        if not self._checking.locked() and self._all_quiet():
            return LOCK_CONNECTIONS  # the common case: one `poll`, no lock
        async with self._checking:
            await self._check()
        return self.held

    def _all_quiet(self) -> bool:
        """Whether every lock connection holds the lock and the server sent nothing on any of them."""
        conns = [conn for conn in self._conns if conn is not None and not conn.closed and not conn.broken]
        return len(conns) == LOCK_CONNECTIONS and None not in self._pids and is_quiet(*conns)

    async def _check(self) -> None:
        for slot in range(LOCK_CONNECTIONS):
            if await self._alive(slot):
                continue
            logger.warning("liveness lock connection %d was lost; reconnecting", slot)
            try:
                await self._lock(slot)
            except (psycopg.Error, OSError, DatabaseConnectionError) as err:
                if self.held == 0:
                    logger.warning(
                        "no liveness lock held (%s): other workers may take over this worker's tasks",
                        one_line(err, with_type=True),
                    )
                continue
            logger.info("liveness lock connection %d holds the lock again", slot)

    async def _alive(self, slot: int) -> bool:
        conn, pid = self._conns[slot], self._pids[slot]
        if conn is None or pid is None or conn.closed or conn.broken:
            return False
        if is_quiet(conn):
            return True
        try:  # the server closed the socket or wrote to it (a termination notice?): ask it
            return await backend_pid(conn) == pid
        except (psycopg.Error, OSError):
            return False

    async def close(self) -> None:
        """Release the lock (close its connections)."""
        self.enabled = False
        conns = self._conns
        self._conns = [None for _ in range(LOCK_CONNECTIONS)]
        self._pids = [None] * LOCK_CONNECTIONS
        for conn in conns:
            if conn is not None:
                await conn.close()


async def start_liveness(
    dsn: str,
    worker_id: str,
    queue: str,
    *,
    connect_timeout: int,
    application_name: str,
    on_lost: Callable[[str], None] | None = None,
) -> Liveness | RowLiveness:
    """The worker's proof of life: a session lock on direct connections, else a liveness row (behind a pooler).

    Logs which one it uses when it is the row; check `enabled` for whether either works. `on_lost` is
    called in the event loop with an identity whose runs peers took over while this worker lived (rows only).
    """
    lock = Liveness(dsn, claim_identity(worker_id), connect_timeout=connect_timeout, application_name=application_name)
    started = await lock.start()
    if started is not None:
        return lock
    row = RowLiveness(dsn, worker_id, queue, connect_timeout=connect_timeout, on_lost=on_lost)
    if await row.start():
        logger.info(
            "fast takeover by liveness row: the connection is not a direct session (PgBouncer in transaction "
            "mode?), so session locks cannot prove this worker alive; peers take over its tasks %.1fs after "
            "its last beat",
            STALE_AFTER,
        )
    return row


def claim_guard(
    liveness: Liveness | RowLiveness | None, conn: psycopg.AsyncConnection[Any], claimed_by: str
) -> contextlib.AbstractAsyncContextManager[bool]:
    """Wrap a claim in `claimed_by`: whether to claim, held until the claim is committed.

    For a liveness-row identity, a transaction that holds the row (`for share`): no peer deletes it, and
    so hands back the claimed runs, before the claim commits; false when the row is already gone (this
    worker was presumed dead; its beat thread picks a fresh identity). Anything else: true, no transaction.
    """
    if needs_claim_guard(liveness, claimed_by):
        return cast(RowLiveness, liveness).claim_guard(conn, claimed_by)
    return contextlib.nullcontext(True)


def needs_claim_guard(liveness: Liveness | RowLiveness | None, claimed_by: str) -> bool:
    """Whether a claim in `claimed_by` runs in a transaction that holds a liveness row (`claim_guard`)."""
    return isinstance(liveness, RowLiveness) and claimed_by.startswith(ROW_CLAIM_PREFIX)
