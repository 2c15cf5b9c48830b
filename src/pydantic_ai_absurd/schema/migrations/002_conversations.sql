-- Conversations (PostgresConversationStore): one record per conversation, one immutable entry per message.
--
-- Entries form chains through parent_id; a fork shares its source's entries. Every record and every entry
-- belongs to a lineage (a conversation and the forks made from it), the unit a delete collects unreachable
-- entries in. Messages are JSON text (never jsonb) so a loaded history is byte-identical to what was saved.
-- Rows go away only by an explicit delete (ConversationStore.delete); there is no time-based retention.

create table if not exists pydantic_ai_absurd.conversations (
    conversation_id text primary key,
    lineage text not null,
    head_id text,
    revision text not null,
    scope text,
    usage text not null,
    deferred_tool_requests text,
    forked_from text,
    forked_at text,
    branches text[] not null default '{}',
    updated_at timestamptz not null,
    format_version integer not null default 1
);

create index if not exists conversations_updated_at_idx
    on pydantic_ai_absurd.conversations (updated_at desc);
create index if not exists conversations_scope_updated_at_idx
    on pydantic_ai_absurd.conversations (scope, updated_at desc);
create index if not exists conversations_lineage_idx
    on pydantic_ai_absurd.conversations (lineage);

create table if not exists pydantic_ai_absurd.conversation_entries (
    entry_id text primary key,
    parent_id text,
    lineage text not null,
    kind text not null default 'message',
    message text not null,
    created_at timestamptz not null default now()
);

create index if not exists conversation_entries_lineage_idx
    on pydantic_ai_absurd.conversation_entries (lineage);

-- One row per durable agent turn saved from an Absurd task, so a save step re-executed after a crash
-- (the store committed, the checkpoint did not) recognises its own save instead of reporting a conflict.
create table if not exists pydantic_ai_absurd.conversation_turns (
    turn_id text primary key,
    conversation_id text not null,
    revision text not null,
    entry_ids text[] not null,
    saved_at timestamptz not null default now()
);

create index if not exists conversation_turns_conversation_idx
    on pydantic_ai_absurd.conversation_turns (conversation_id);
