-- The task names the workers of each queue run (`run_worker`, `pydantic-ai-absurd worker` record theirs at
-- start-up). `tasks` and `inspect` say "no worker knows this task" for a task whose name is missing while
-- the queue has registrations, and `spawn_task(..., queue=...)` refuses such a name. A queue without any
-- row (workers of another kind) is not judged. A name stays until deleted by hand.
create table if not exists pydantic_ai_absurd.task_registrations (
    queue_name text not null,
    task_name text not null,
    worker_id text not null,
    registered_at timestamptz not null default now(),
    primary key (queue_name, task_name)
);
