-- Executions of a run that were lost because their worker died, recorded by the worker that took the run
-- over (fast takeover hands the run back without using an attempt, so Absurd's run row keeps no trace of
-- the dead worker). `inspect` shows them. A lease that expired is visible in Absurd's runs already.
-- Rows are small and written only on a takeover; they are not deleted with their task.
create table if not exists pydantic_ai_absurd.lost_executions (
    queue_name text not null,
    task_id uuid not null,
    run_id uuid not null,
    attempt integer not null,
    -- `claimed_by` of the run when its worker died, and when that worker claimed it.
    worker text not null,
    claimed_at timestamptz,
    taken_over_at timestamptz not null,
    taken_over_by text not null,
    primary key (queue_name, task_id, taken_over_at, run_id)
);
