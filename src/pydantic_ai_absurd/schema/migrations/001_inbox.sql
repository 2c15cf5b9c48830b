-- The inbox: one row per durable wait for human input (`Inbox.ask`), keyed on the wait's resume token.
-- Rows stay after the answer (who answered and when) until `Inbox.purge()` deletes them; a row whose
-- task is gone (Absurd's retention deleted it) is no longer pending and is purged the same way.
create table if not exists pydantic_ai_absurd.inbox_requests (
    token text primary key,
    queue_name text not null,
    task_id uuid not null,
    task_name text not null,
    agent_name text,
    wait_name text not null,
    -- The pending calls: `DeferredToolRequests` in its JSON form (`calls`, `approvals`, `metadata`).
    requests jsonb not null,
    scope text,
    asked_at timestamptz not null,
    expires_at timestamptz,
    notified_at timestamptz,
    -- Decisions given so far (partial `DeferredToolResults` JSON); the event is emitted once all calls have one.
    decisions jsonb not null default '{}'::jsonb,
    answered_at timestamptz
);

-- `pending()`: open requests, oldest first, optionally of one scope or task.
create index if not exists inbox_requests_open
    on pydantic_ai_absurd.inbox_requests (asked_at, token) where answered_at is null;
create index if not exists inbox_requests_open_scope
    on pydantic_ai_absurd.inbox_requests (scope, asked_at, token) where answered_at is null;
create index if not exists inbox_requests_task on pydantic_ai_absurd.inbox_requests (task_id);
-- `purge()`.
create index if not exists inbox_requests_asked on pydantic_ai_absurd.inbox_requests (asked_at);
