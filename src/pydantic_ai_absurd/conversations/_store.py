"""`PostgresConversationStore`: Pydantic AI's `ConversationStore` on Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic_ai.conversation_store import (
    ConversationConflict,
    ConversationEntry,
    ConversationRecord,
    ConversationStore,
)

from .._db import connection_pool, fetch_all_as, fetch_one_as
from .._dsn import redact_dsn
from .._execution import bound
from ..errors import SchemaNotInstalledError
from . import _sql
from ._codec import EntryRow, HistoryRow, RecordRow, entries_from_rows, message_text, record_from_row, record_params

__all__ = ["PostgresConversationStore", "SavedTurn"]

_ALL = 2**31 - 1
_LOCK_PREFIX = "pydantic_ai_absurd.conversations:"

_turn_id: ContextVar[str | None] = ContextVar("pydantic_ai_absurd.conversation_turn", default=None)


class SavedTurn:
    """What one durable turn's save stored: the revision it wrote and its entries' IDs."""

    __slots__ = ("conversation_id", "entry_ids", "revision")

    def __init__(self, conversation_id: str, revision: str, entry_ids: Sequence[str]) -> None:
        self.conversation_id = conversation_id
        self.revision = revision
        self.entry_ids = list(entry_ids)


def saving_turn(turn_id: str) -> AbstractContextManager[None]:
    """Record the saves inside under `turn_id` (a durable turn's identity), in the save's own transaction."""
    return bound(_turn_id, turn_id)


class PostgresConversationStore(ConversationStore):
    """Pydantic AI's `ConversationStore` in Postgres, shared by every process.

    Records and entries live in the `pydantic_ai_absurd` schema, created by `setup()` /
    `pydantic-ai-absurd init`. Each message is stored once, as JSON text written by Pydantic AI's
    `ModelMessagesTypeAdapter` (not `jsonb`, which reorders keys), so a loaded history is byte-identical
    to what was saved. A save writes the record and the turn's new entries in one transaction; a stale
    revision raises `ConversationConflict` and leaves nothing behind. A history, or its last `limit`
    messages, loads in one query.

    Retention is explicit: rows stay until `delete`.
    A delete removes the record and every entry no remaining conversation reaches (a fork keeps the
    entries it shares with the conversation it was forked from).

    Args:
        dsn_or_pool: A Postgres connection string, or an open `psycopg_pool.AsyncConnectionPool` to share
            (it is not closed by `close()`).
        min_size: Connections kept open by the pool the store creates from a DSN.
        max_size: Largest size of that pool.
    """

    def __init__(self, dsn_or_pool: str | AsyncConnectionPool[Any], *, min_size: int = 1, max_size: int = 10) -> None:
        if isinstance(dsn_or_pool, str):
            self._dsn: str | None = dsn_or_pool
            self._pool: AsyncConnectionPool[Any] | None = None
            self._owns_pool = True
        else:
            self._dsn = None
            self._pool = dsn_or_pool
            self._owns_pool = False
        self._min_size = min_size
        self._max_size = max_size
        self._opening = asyncio.Lock()

    @property
    def where(self) -> str:
        """The database the store uses, password redacted (for messages)."""
        if self._dsn is not None:
            return redact_dsn(self._dsn)
        conninfo = self._pool.conninfo if self._pool is not None else None
        return redact_dsn(conninfo) if isinstance(conninfo, str) else "the pool's database"

    async def _get_pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                assert self._dsn is not None
                pool: AsyncConnectionPool[Any] = connection_pool(
                    self._dsn, min_size=self._min_size, max_size=self._max_size
                )
                await pool.open(wait=True)
                self._pool = pool
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncGenerator[AsyncConnection[Any]]:
        pool = await self._get_pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaNotInstalledError(
                f"The conversation tables are missing in {self.where}: run `pydantic-ai-absurd init` "
                "(or `await pydantic_ai_absurd.setup(dsn)`) against that database."
            ) from exc

    async def close(self) -> None:
        """Close the connection pool the store opened from its DSN (a pool passed in is left open)."""
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> PostgresConversationStore:
        await self._get_pool()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the five primitives -------------------------------------------------------------------------------

    async def read_record(self, conversation_id: str) -> ConversationRecord | None:
        """The record for a conversation, or `None` if the store doesn't have it."""
        async with self._connection() as conn:
            row = await fetch_one_as(conn, RecordRow, _sql.READ_RECORD, (conversation_id,))
        return record_from_row(row) if row is not None else None

    async def read_records(self, *, scope: str | None = None, limit: int | None = None) -> Sequence[ConversationRecord]:
        """The stored records, or those with `scope`, most recently saved first, at most `limit` of them."""
        count = _ALL if limit is None else limit
        async with self._connection() as conn:
            if scope is None:
                rows = await fetch_all_as(conn, RecordRow, _sql.READ_RECORDS, (count,))
            else:
                rows = await fetch_all_as(conn, RecordRow, _sql.READ_RECORDS_IN_SCOPE, (scope, count))
        return [record_from_row(row) for row in rows]

    async def write_record(
        self,
        record: ConversationRecord,
        *,
        new_entries: Sequence[ConversationEntry] = (),
        expected_revision: str | None,
    ) -> None:
        """Store `record` and its new entries in one transaction, replacing the record with `expected_revision`.

        Raises:
            ConversationConflict: The stored revision is not `expected_revision` (a record exists when it is
                `None`), or `record.head_id` names an entry that neither the store nor `new_entries` has.
        """
        conversation_id = record.conversation_id
        new_ids = {entry.id for entry in new_entries}
        turn_id = _turn_id.get()
        async with self._connection() as conn, conn.transaction():
            lineage = await self._lineage_for(conn, record, new_entries, expected_revision=expected_revision)
            await conn.execute(_sql.LOCK_SHARED, (_LOCK_PREFIX + lineage,))
            params = record_params(record)
            if expected_revision is None:
                cursor = await conn.execute(_sql.INSERT_RECORD, {**params, "lineage": lineage})
            else:
                cursor = await conn.execute(_sql.UPDATE_RECORD, {**params, "expected": expected_revision})
            if await cursor.fetchone() is None:
                raise ConversationConflict(conversation_id)
            # Under the lineage lock no delete can release it now; if one already did, the save conflicts.
            referenced = record.head_id if record.head_id not in new_ids else (new_entries[0].parent_id)
            if referenced is not None and referenced not in new_ids:
                cursor = await conn.execute(_sql.ENTRY_EXISTS, (referenced,))
                if await cursor.fetchone() is None:
                    raise ConversationConflict(conversation_id)
            if new_entries:
                await conn.execute(
                    _sql.INSERT_ENTRIES,
                    (
                        lineage,
                        [entry.id for entry in new_entries],
                        [entry.parent_id for entry in new_entries],
                        [entry.kind for entry in new_entries],
                        [message_text(entry.message) for entry in new_entries],
                    ),
                )
            if turn_id is not None:
                await conn.execute(
                    _sql.INSERT_TURN, (turn_id, conversation_id, record.revision, [entry.id for entry in new_entries])
                )

    async def _lineage_for(
        self,
        conn: AsyncConnection[Any],
        record: ConversationRecord,
        new_entries: Sequence[ConversationEntry],
        *,
        expected_revision: str | None,
    ) -> str:
        """The lineage `record` belongs to: its stored one, that of the entry a new record starts from, or a new one."""
        if expected_revision is not None:
            cursor = await conn.execute(_sql.LINEAGE_OF_RECORD, (record.conversation_id,))
            row = await cursor.fetchone()
            if row is None:
                raise ConversationConflict(record.conversation_id)
            return str(row[0])
        new_ids = {entry.id for entry in new_entries}
        start = new_entries[0].parent_id if record.head_id in new_ids else record.head_id
        if start is None:
            return str(uuid.uuid4())
        cursor = await conn.execute(_sql.LINEAGE_OF_ENTRY, (start,))
        row = await cursor.fetchone()
        if row is None:
            raise ConversationConflict(record.conversation_id)
        return str(row[0])

    async def delete_record(self, conversation_id: str, *, expected_revision: str) -> None:
        """Delete a conversation's record, its turn log and every entry of its lineage no remaining record reaches.

        Raises:
            ConversationConflict: If no record with `expected_revision` is stored.
        """
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(_sql.LINEAGE_OF_RECORD, (conversation_id,))
            row = await cursor.fetchone()
            if row is None:
                raise ConversationConflict(conversation_id)
            lineage = str(row[0])
            await conn.execute(_sql.LOCK_EXCLUSIVE, (_LOCK_PREFIX + lineage,))
            cursor = await conn.execute(_sql.DELETE_RECORD, (conversation_id, expected_revision))
            if await cursor.fetchone() is None:
                raise ConversationConflict(conversation_id)
            cursor = await conn.execute(_sql.LINEAGE_HAS_RECORDS, (lineage,))
            others = await cursor.fetchone()
            if others is not None and others[0]:
                await conn.execute(_sql.DELETE_UNREACHABLE_ENTRIES, {"lineage": lineage})
            else:
                await conn.execute(_sql.DELETE_LINEAGE_ENTRIES, (lineage,))
            await conn.execute(_sql.DELETE_TURNS, (conversation_id,))

    async def read_entry(self, entry_id: str) -> ConversationEntry:
        """The entry with this identifier.

        Raises:
            KeyError: If the store has no such entry.
        """
        async with self._connection() as conn:
            row = await fetch_one_as(conn, EntryRow, _sql.READ_ENTRY, (entry_id,))
        if row is None:
            raise KeyError(entry_id)
        return entries_from_rows([row])[0]

    async def read_history(self, head_id: str | None, *, limit: int | None = None) -> list[ConversationEntry]:
        """The entries from the first one up to `head_id`, or only the last `limit` of them, in one query.

        Raises:
            KeyError: If an entry of the chain is missing (a concurrent delete released it).
        """
        if head_id is None or limit == 0:
            return []
        count = _ALL if limit is None else limit
        async with self._connection() as conn:
            rows = await fetch_all_as(conn, HistoryRow, _sql.READ_HISTORY, {"head": head_id, "limit": count})
        if not rows:
            raise KeyError(head_id)
        oldest = rows[0]
        if oldest.parent_id is not None and len(rows) < count:
            raise KeyError(oldest.parent_id)
        return entries_from_rows(rows)

    # -- durable turns ----------------------------------------------------------------------------------------

    async def saved_turn(self, turn_id: str) -> SavedTurn | None:
        """What the durable turn `turn_id` saved, if its save committed (`None` otherwise)."""
        async with self._connection() as conn:
            return await fetch_one_as(conn, SavedTurn, _sql.READ_TURN, (turn_id,))
