-- Event logs of durable runs (`AbsurdAgent(..., publish_events=True)`): one row per event, numbered per task.
--
-- Rows go away with their task: `install_event_triggers(queue)` (called by the first publisher of a queue)
-- adds an AFTER DELETE trigger on the queue's task table, so Absurd's cleanup (`absurd.cleanup_tasks`,
-- driven by the queue policy's `cleanup_ttl`) deletes a task's log with the task. The same function adds
-- the triggers that write the status events Absurd's own functions cause: waiting for input, resumed,
-- finished. Writers append through `append_events` / `start_execution`, which number events under a
-- per-task advisory lock held until commit, so sequence numbers are gap-free and commit in order.
--
-- Absurd SQL outside `_absurd/`: the triggers and functions below read Absurd's per-queue tables
-- (`absurd.t_<queue>`, `r_`, `c_`) directly, because they run inside Postgres where `_absurd` cannot reach.

create table pydantic_ai_absurd.events (
    queue_name text not null,
    task_id uuid not null,
    seq bigint not null,
    kind text not null,
    attempt integer,
    step text,
    event jsonb not null,
    created_at timestamptz not null default clock_timestamp(),
    primary key (queue_name, task_id, seq)
);

comment on table pydantic_ai_absurd.events is
    'Event log of durable agent runs (publish_events=True); rows are deleted with their Absurd task.';

create function pydantic_ai_absurd.events_channel(p_task_id uuid)
    returns text
    language sql
    immutable
as $$ select 'pydantic_ai_absurd.events.' || p_task_id::text $$;

create function pydantic_ai_absurd._lock_event_log(p_queue_name text, p_task_id uuid)
    returns void
    language sql
as $$ select pg_advisory_xact_lock(hashtextextended('pydantic_ai_absurd.events:' || p_queue_name || ':' || p_task_id::text, 0)) $$;

create function pydantic_ai_absurd._insert_events(
    p_queue_name text, p_task_id uuid, p_attempt integer, p_step text, p_kinds text[], p_events jsonb[]
)
    returns bigint
    language plpgsql
as $$
declare
    v_seq bigint;
    v_count integer := coalesce(array_length(p_kinds, 1), 0);
begin
    select coalesce(max(seq), 0) into v_seq
      from pydantic_ai_absurd.events
     where queue_name = p_queue_name and task_id = p_task_id;
    if v_count = 0 then
        return v_seq;
    end if;
    insert into pydantic_ai_absurd.events (queue_name, task_id, seq, kind, attempt, step, event)
    select p_queue_name, p_task_id, v_seq + i, p_kinds[i], p_attempt, p_step, p_events[i]
      from generate_subscripts(p_kinds, 1) as i;
    v_seq := v_seq + v_count;
    perform pg_notify(pydantic_ai_absurd.events_channel(p_task_id), v_seq::text);
    return v_seq;
end;
$$;

-- Append events written by the run `p_run_id` (inside its step `p_step`). Returns the last seq, or null
-- when that run is no longer the task's running run (a worker that lost its claim writes nothing more).
create function pydantic_ai_absurd.append_events(
    p_queue_name text, p_task_id uuid, p_run_id uuid, p_attempt integer, p_step text, p_kinds text[], p_events jsonb[]
)
    returns bigint
    language plpgsql
as $$
declare
    v_running boolean;
begin
    perform pydantic_ai_absurd._lock_event_log(p_queue_name, p_task_id);
    execute format('select exists (select 1 from absurd.%I where run_id = $1 and state = ''running'')',
                   'r_' || p_queue_name)
       into v_running using p_run_id;
    if not v_running then
        return null;
    end if;
    return pydantic_ai_absurd._insert_events(p_queue_name, p_task_id, p_attempt, p_step, p_kinds, p_events);
end;
$$;

-- The first agent run of every execution of a task calls this, before any step: it marks the steps that
-- published events but never committed a checkpoint ("step_interrupted": an earlier execution died or
-- failed inside them), then writes "run_started" once per attempt (an execution that continues an attempt,
-- after a wait or a dead worker's hand-back, gets "resumed" from the trigger instead). Returns the last seq
-- or null.
create function pydantic_ai_absurd.start_execution(
    p_queue_name text, p_task_id uuid, p_run_id uuid, p_attempt integer, p_event jsonb
)
    returns bigint
    language plpgsql
as $$
declare
    v_running boolean;
    v_steps record;
    v_kinds text[] := '{}';
    v_events jsonb[] := '{}';
begin
    perform pydantic_ai_absurd._lock_event_log(p_queue_name, p_task_id);
    execute format('select exists (select 1 from absurd.%I where run_id = $1 and state = ''running'')',
                   'r_' || p_queue_name)
       into v_running using p_run_id;
    if not v_running then
        return null;
    end if;
    for v_steps in execute format(
        'select e.step, max(e.attempt) as attempt, max(e.seq) as last_seq
           from pydantic_ai_absurd.events e
          where e.queue_name = $1 and e.task_id = $2 and e.step is not null
            and not exists (select 1 from absurd.%I c
                             where c.task_id = e.task_id and c.checkpoint_name = e.step and c.status = ''committed'')
            and not exists (select 1 from pydantic_ai_absurd.events m
                             where m.queue_name = e.queue_name and m.task_id = e.task_id and m.kind = ''step_interrupted''
                               and m.event->>''step'' = e.step and (m.event->>''last_seq'')::bigint >= e.seq)
          group by e.step
          order by max(e.seq)',
        'c_' || p_queue_name)
        using p_queue_name, p_task_id
    loop
        v_kinds := v_kinds || 'step_interrupted'::text;
        v_events := v_events || jsonb_build_object(
            'event_kind', 'step_interrupted', 'step', v_steps.step, 'attempt', v_steps.attempt,
            'last_seq', v_steps.last_seq);
    end loop;
    if not exists (
        select 1 from pydantic_ai_absurd.events
         where queue_name = p_queue_name and task_id = p_task_id and kind = 'run_started' and attempt = p_attempt
    ) then
        v_kinds := v_kinds || 'run_started'::text;
        v_events := v_events || p_event;
    end if;
    return pydantic_ai_absurd._insert_events(p_queue_name, p_task_id, p_attempt, null, v_kinds, v_events);
end;
$$;

-- A status event caused by Absurd itself, written only for tasks that have an event log.
create function pydantic_ai_absurd._append_status(p_queue_name text, p_task_id uuid, p_attempt integer, p_event jsonb)
    returns void
    language plpgsql
as $$
begin
    if not exists (select 1 from pydantic_ai_absurd.events where queue_name = p_queue_name and task_id = p_task_id) then
        return;
    end if;
    perform pydantic_ai_absurd._lock_event_log(p_queue_name, p_task_id);
    perform pydantic_ai_absurd._insert_events(
        p_queue_name, p_task_id, p_attempt, null, array[p_event->>'event_kind'], array[p_event]);
end;
$$;

create function pydantic_ai_absurd._events_on_task_update()
    returns trigger
    language plpgsql
as $$
begin
    if new.state in ('completed', 'failed', 'cancelled') and old.state is distinct from new.state then
        perform pydantic_ai_absurd._append_status(
            substr(tg_table_name, 3), new.task_id, new.attempts,
            jsonb_build_object('event_kind', 'run_finished', 'status', new.state));
    end if;
    return null;
end;
$$;

create function pydantic_ai_absurd._events_on_task_delete()
    returns trigger
    language plpgsql
as $$
begin
    delete from pydantic_ai_absurd.events where queue_name = substr(tg_table_name, 3) and task_id = old.task_id;
    return null;
end;
$$;

-- The inbox request recorded for a resume token (`pydantic_ai_absurd.inbox_requests`), when that table exists.
create function pydantic_ai_absurd._inbox_request(p_token text)
    returns jsonb
    language plpgsql
    stable
as $$
declare
    v_request jsonb;
begin
    if to_regclass('pydantic_ai_absurd.inbox_requests') is null then
        return null;
    end if;
    execute 'select jsonb_build_object(''name'', wait_name, ''agent_name'', agent_name, ''scope'', scope,'
            ' ''requests'', requests, ''expires_at'', expires_at)'
            ' from pydantic_ai_absurd.inbox_requests where token = $1'
       into v_request using p_token;
    return v_request;
end;
$$;

create function pydantic_ai_absurd._events_on_run_update()
    returns trigger
    language plpgsql
as $$
begin
    if new.state = 'sleeping' and old.state = 'running' and new.wake_event like 'pydantic-ai-absurd:%' then
        perform pydantic_ai_absurd._append_status(
            substr(tg_table_name, 3), new.task_id, new.attempt,
            jsonb_build_object('event_kind', 'waiting_for_input', 'token', new.wake_event,
                               'request', pydantic_ai_absurd._inbox_request(new.wake_event)));
    elsif new.state = 'running' and old.state in ('pending', 'sleeping') and old.started_at is not null then
        perform pydantic_ai_absurd._append_status(
            substr(tg_table_name, 3), new.task_id, new.attempt,
            jsonb_build_object('event_kind', 'resumed', 'attempt', new.attempt));
    end if;
    return null;
end;
$$;

-- Idempotent; safe to call concurrently. Creates the triggers only when they are missing.
create function pydantic_ai_absurd.install_event_triggers(p_queue_name text)
    returns void
    language plpgsql
as $$
declare
    v_tasks regclass := to_regclass(format('absurd.%I', 't_' || p_queue_name));
    v_runs regclass := to_regclass(format('absurd.%I', 'r_' || p_queue_name));
begin
    if v_tasks is null or v_runs is null then
        raise exception 'Queue "%" does not exist', p_queue_name;
    end if;
    if (select count(*) from pg_trigger
         where tgname like 'pydantic_ai_absurd_events_%' and tgrelid in (v_tasks, v_runs)) = 3 then
        return;
    end if;
    execute format('create or replace trigger pydantic_ai_absurd_events_finished after update of state on %s '
                   'for each row execute function pydantic_ai_absurd._events_on_task_update()', v_tasks);
    execute format('create or replace trigger pydantic_ai_absurd_events_deleted after delete on %s '
                   'for each row execute function pydantic_ai_absurd._events_on_task_delete()', v_tasks);
    execute format('create or replace trigger pydantic_ai_absurd_events_run after update of state on %s '
                   'for each row execute function pydantic_ai_absurd._events_on_run_update()', v_runs);
end;
$$;
