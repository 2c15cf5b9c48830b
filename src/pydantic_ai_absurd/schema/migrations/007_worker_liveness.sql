-- Liveness rows of the workers that cannot prove they are alive with a session lock (behind a transaction-mode
-- pooler such as PgBouncer). A worker inserts its row at start-up, before it claims anything in the row's
-- identity, and updates `beat_at` with one statement about every half second. A peer that finds a row of its
-- queue older than the stale threshold deletes it and hands back the runs claimed in its identity, in one
-- transaction; a worker whose beat then updates no row knows it was presumed dead. Rows go away when their
-- worker stops cleanly, or when a peer of the same queue finds them stale.
create table if not exists pydantic_ai_absurd.worker_liveness (
    identity text primary key,
    queue_name text not null,
    started_at timestamptz not null default clock_timestamp(),
    beat_at timestamptz not null default clock_timestamp()
);
create index if not exists worker_liveness_queue_beat on pydantic_ai_absurd.worker_liveness (queue_name, beat_at);
