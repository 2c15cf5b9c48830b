"""The worker's connection pool: every statement of the worker and of its runs borrows from it.

A connection is lent for one statement (or one short transaction) and given back at once, so the pool's
size bounds the worker's connections, not its concurrency. A connection idle for a while is checked (an
empty query) before it is lent: one that died meanwhile (a server restart, an idle timeout of a pooler) is
replaced instead of failing a run's write. A connection in steady use is lent without that round trip.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .._db import connection_pool

__all__ = ["IDLE_CHECK_AFTER", "WorkerPool"]

IDLE_CHECK_AFTER = 30.0
"""Seconds a pooled connection may sit unused before it is checked (one empty query) when lent again."""


class WorkerPool:
    """An `AsyncConnectionPool` of autocommit connections, lent one statement at a time."""

    def __init__(self, dsn: str, *, size: int, application_name: str, connect_timeout: float, name: str) -> None:
        self._last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()
        self.timeout = connect_timeout
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = connection_pool(
            dsn,
            min_size=1,
            max_size=size,
            application_name=application_name,
            connect_timeout=max(1, round(connect_timeout)),
            timeout=connect_timeout,
            check=self._check,
            name=name,
        )

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > IDLE_CHECK_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
        """Lend a connection for the block (checked first if it sat idle), then take it back."""
        async with self.pool.connection(timeout=self.timeout) as conn:
            try:
                yield conn
            finally:
                self._last_used[conn] = time.monotonic()

    async def open(self) -> None:
        """Start connecting in the background (a claim waits for the first connection)."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()
