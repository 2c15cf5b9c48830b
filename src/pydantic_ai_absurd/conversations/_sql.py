"""The SQL of `PostgresConversationStore` (tables created by migration `002_conversations.sql`)."""

from __future__ import annotations

from ..schema._tables import OWN_SCHEMA

RECORDS = f"{OWN_SCHEMA}.conversations"
ENTRIES = f"{OWN_SCHEMA}.conversation_entries"
TURNS = f"{OWN_SCHEMA}.conversation_turns"

RECORD_COLUMNS = (
    "conversation_id, head_id, revision, scope, usage, deferred_tool_requests, forked_from, forked_at, "
    "branches, updated_at, format_version"
)

READ_RECORD = f"select {RECORD_COLUMNS} from {RECORDS} where conversation_id = %s"

READ_RECORDS = f"select {RECORD_COLUMNS} from {RECORDS} order by updated_at desc, conversation_id limit %s"

READ_RECORDS_IN_SCOPE = (
    f"select {RECORD_COLUMNS} from {RECORDS} where scope = %s order by updated_at desc, conversation_id limit %s"
)

READ_ENTRY = f"select entry_id, parent_id, kind, message from {ENTRIES} where entry_id = %s"

# Walks the parent chain from the head, newest first, at most `limit` entries: one statement whatever the
# length. `depth` orders the result; the oldest row's `parent_id` tells whether the chain was cut short.
READ_HISTORY = f"""
with recursive chain (entry_id, parent_id, kind, message, depth) as (
    select entry_id, parent_id, kind, message, 1 from {ENTRIES} where entry_id = %(head)s
    union all
    select e.entry_id, e.parent_id, e.kind, e.message, c.depth + 1
    from chain c join {ENTRIES} e on e.entry_id = c.parent_id
    where c.depth < %(limit)s
)
select entry_id, parent_id, kind, message, depth from chain order by depth desc
"""

LINEAGE_OF_RECORD = f"select lineage from {RECORDS} where conversation_id = %s"

LINEAGE_OF_ENTRY = f"select lineage from {ENTRIES} where entry_id = %s"

ENTRY_EXISTS = f"select 1 from {ENTRIES} where entry_id = %s"

# Writers of one lineage share this lock; a delete, which collects the lineage's unreachable entries,
# takes it alone, so no save can point at an entry the delete is removing.
LOCK_SHARED = "select pg_advisory_xact_lock_shared(hashtextextended(%s, 0))"
LOCK_EXCLUSIVE = "select pg_advisory_xact_lock(hashtextextended(%s, 0))"

UPDATE_RECORD = f"""
update {RECORDS} set head_id = %(head_id)s, revision = %(revision)s, scope = %(scope)s, usage = %(usage)s,
    deferred_tool_requests = %(deferred)s, forked_from = %(forked_from)s, forked_at = %(forked_at)s,
    branches = %(branches)s, updated_at = %(updated_at)s, format_version = %(format_version)s
where conversation_id = %(conversation_id)s and revision = %(expected)s
returning 1
"""

INSERT_RECORD = f"""
insert into {RECORDS} (conversation_id, lineage, head_id, revision, scope, usage, deferred_tool_requests,
    forked_from, forked_at, branches, updated_at, format_version)
values (%(conversation_id)s, %(lineage)s, %(head_id)s, %(revision)s, %(scope)s, %(usage)s, %(deferred)s,
    %(forked_from)s, %(forked_at)s, %(branches)s, %(updated_at)s, %(format_version)s)
on conflict (conversation_id) do nothing
returning 1
"""

# The arrays go in binary (`%b`): psycopg's text format escapes every quote of every JSON message in Python,
# about 100 µs a message; binary copies the bytes.
INSERT_ENTRIES = f"""
insert into {ENTRIES} (entry_id, parent_id, lineage, kind, message)
select entry_id, parent_id, %s, kind, message
from unnest(%b::text[], %b::text[], %b::text[], %b::text[]) as new (entry_id, parent_id, kind, message)
"""

DELETE_RECORD = f"delete from {RECORDS} where conversation_id = %s and revision = %s returning 1"

LINEAGE_HAS_RECORDS = f"select exists (select 1 from {RECORDS} where lineage = %s)"

DELETE_LINEAGE_ENTRIES = f"delete from {ENTRIES} where lineage = %s"

# The entries of a lineage that no remaining record's history or branch reaches.
DELETE_UNREACHABLE_ENTRIES = f"""
with recursive reach (entry_id) as (
    select tip from {RECORDS} r, unnest(array_prepend(r.head_id, r.branches)) as tip
    where r.lineage = %(lineage)s and tip is not null
    union
    select e.parent_id from reach c join {ENTRIES} e on e.entry_id = c.entry_id where e.parent_id is not null
)
delete from {ENTRIES} e
where e.lineage = %(lineage)s and not exists (select 1 from reach where reach.entry_id = e.entry_id)
"""

DELETE_TURNS = f"delete from {TURNS} where conversation_id = %s"

INSERT_TURN = f"insert into {TURNS} (turn_id, conversation_id, revision, entry_ids) values (%s, %s, %s, %s)"

READ_TURN = f"select conversation_id, revision, entry_ids from {TURNS} where turn_id = %s"
