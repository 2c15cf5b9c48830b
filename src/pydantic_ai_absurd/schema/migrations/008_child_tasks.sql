-- Child tasks (`AbsurdAgent.run_as_child`): one row per child task a durable parent spawned.
--
-- The parent inserts the row in the transaction that spawns the child. `install_child_task_triggers(queue)`
-- (called before a spawn, for the parent's queue and the child's) adds triggers on the queue's task table:
--
-- * a child that ends (completed, failed for good, cancelled; whoever ran it, even `cancel_task` in SQL)
--   emits the event its parent waits on, on the parent's queue (events are per queue);
-- * a parent that is cancelled or fails for good cancels its unfinished children (whose own rows cascade
--   to theirs);
-- * rows go away with their tasks: deleting a task (Absurd's cleanup, `cleanup_ttl`) deletes the rows
--   where it is the parent or the child.
--
-- Every action of the triggers runs in a subtransaction that only warns on failure: ending a task never
-- fails because of its family (a queue dropped meanwhile, a lock conflict).
--
-- Absurd SQL outside `_absurd/`: the triggers below call Absurd's `emit_event` and `cancel_task` and read its
-- per-queue task tables, because they run inside Postgres where `_absurd` cannot reach.

create table if not exists pydantic_ai_absurd.child_tasks (
    child_queue text not null,
    child_task_id uuid not null,
    parent_queue text not null,
    parent_task_id uuid not null,
    task_name text not null,
    -- The parent's checkpoint that holds the child's result (`....child_task:<name>:<n>`).
    call_site text not null,
    -- A digest of what the child was asked: a re-run of the call that asks something else is a divergence.
    request_key text not null,
    -- The event the child's end emits on the parent's queue.
    event_name text not null,
    created_at timestamptz not null default now(),
    primary key (child_queue, child_task_id)
);

-- `inspect_task` of a parent and the cancel cascade: a parent's children.
create index if not exists child_tasks_parent
    on pydantic_ai_absurd.child_tasks (parent_queue, parent_task_id);

comment on table pydantic_ai_absurd.child_tasks is
    'Child tasks of durable agent runs (run_as_child); rows are deleted with their parent or child task.';

create or replace function pydantic_ai_absurd._child_tasks_on_task_update()
    returns trigger
    language plpgsql
as $$
declare
    v_queue text := substr(tg_table_name, 3);
    v_link record;
    v_parent_state text;
begin
    if new.state = old.state or new.state not in ('completed', 'failed', 'cancelled') then
        return null;
    end if;
    for v_link in
        select parent_queue, parent_task_id, event_name from pydantic_ai_absurd.child_tasks
         where child_queue = v_queue and child_task_id = new.task_id
    loop
        begin
            -- A parent that ended (being cancelled is how this child got cancelled) is not woken up again.
            select state into v_parent_state
              from absurd.get_task_result(v_link.parent_queue, v_link.parent_task_id);
            continue when v_parent_state in ('completed', 'failed', 'cancelled');
            perform absurd.emit_event(v_link.parent_queue, v_link.event_name,
                                      jsonb_build_object('state', new.state));
        exception when others then
            raise warning 'pydantic_ai_absurd: could not wake the parent of task %: %', new.task_id, sqlerrm;
        end;
    end loop;
    if new.state in ('failed', 'cancelled') then
        for v_link in
            select child_queue, child_task_id from pydantic_ai_absurd.child_tasks
             where parent_queue = v_queue and parent_task_id = new.task_id
        loop
            begin
                perform absurd.cancel_task(v_link.child_queue, v_link.child_task_id);
            exception when others then
                raise warning 'pydantic_ai_absurd: could not cancel child task % of %: %',
                    v_link.child_task_id, new.task_id, sqlerrm;
            end;
        end loop;
    end if;
    return null;
end;
$$;

create or replace function pydantic_ai_absurd._child_tasks_on_task_delete()
    returns trigger
    language plpgsql
as $$
declare
    v_queue text := substr(tg_table_name, 3);
begin
    delete from pydantic_ai_absurd.child_tasks
     where (child_queue = v_queue and child_task_id = old.task_id)
        or (parent_queue = v_queue and parent_task_id = old.task_id);
    return null;
end;
$$;

-- Idempotent; safe to call concurrently. Creates the triggers only when they are missing.
create or replace function pydantic_ai_absurd.install_child_task_triggers(p_queue_name text)
    returns void
    language plpgsql
as $$
declare
    v_tasks regclass := to_regclass(format('absurd.%I', 't_' || p_queue_name));
begin
    if v_tasks is null then
        raise exception 'Queue "%" does not exist', p_queue_name;
    end if;
    if (select count(*) from pg_trigger
         where tgname like 'pydantic_ai_absurd_children_%' and tgrelid = v_tasks) = 2 then
        return;
    end if;
    execute format('create or replace trigger pydantic_ai_absurd_children_ended after update of state on %s '
                   'for each row execute function pydantic_ai_absurd._child_tasks_on_task_update()', v_tasks);
    execute format('create or replace trigger pydantic_ai_absurd_children_deleted after delete on %s '
                   'for each row execute function pydantic_ai_absurd._child_tasks_on_task_delete()', v_tasks);
end;
$$;
