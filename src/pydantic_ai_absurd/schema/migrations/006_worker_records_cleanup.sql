-- How the rows of `lost_executions` and `task_registrations` go away.
--
-- `lost_executions` rows go with their task, like the event log: `install_worker_record_triggers(queue)`
-- (called by every worker of the queue at start-up, before it can record a takeover) adds an AFTER DELETE
-- trigger on the queue's task table, so Absurd's cleanup (`absurd.cleanup_tasks`, driven by the queue
-- policy's `cleanup_ttl`) deletes a task's lost executions with the task. Rows whose task or queue is
-- already gone are deleted below, and the triggers installed for the queues that have rows.
--
-- `task_registrations` rows belong to their queue: every worker start refreshes its names, and dropping the
-- queue (`drop_queue_sync`) deletes them (with the queue's lost executions and event log). A name no worker
-- runs any more stays until deleted by hand:
-- `delete from pydantic_ai_absurd.task_registrations where queue_name = '...' and task_name = '...'`.
--
-- Absurd SQL outside `_absurd/`: the trigger reads the name of Absurd's per-queue task table (`t_<queue>`)
-- and its `task_id` column, as the event log's triggers of migration 003 do.

create or replace function pydantic_ai_absurd._worker_records_on_task_delete()
    returns trigger
    language plpgsql
as $$
begin
    delete from pydantic_ai_absurd.lost_executions where queue_name = substr(tg_table_name, 3) and task_id = old.task_id;
    return null;
end;
$$;

-- Idempotent; safe to call concurrently. Creates the trigger only when it is missing.
create or replace function pydantic_ai_absurd.install_worker_record_triggers(p_queue_name text)
    returns void
    language plpgsql
as $$
declare
    v_tasks regclass := to_regclass(format('absurd.%I', 't_' || p_queue_name));
begin
    if v_tasks is null then
        raise exception 'Queue "%" does not exist', p_queue_name;
    end if;
    if exists (select 1 from pg_trigger
                where tgname = 'pydantic_ai_absurd_lost_executions_deleted' and tgrelid = v_tasks) then
        return;
    end if;
    execute format('create or replace trigger pydantic_ai_absurd_lost_executions_deleted after delete on %s '
                   'for each row execute function pydantic_ai_absurd._worker_records_on_task_delete()', v_tasks);
end;
$$;

do $$
declare
    v_queue text;
begin
    delete from pydantic_ai_absurd.lost_executions l
     where to_regclass(format('absurd.%I', 't_' || l.queue_name)) is null;
    delete from pydantic_ai_absurd.task_registrations r
     where to_regclass(format('absurd.%I', 't_' || r.queue_name)) is null;
    for v_queue in select distinct queue_name from pydantic_ai_absurd.lost_executions loop
        execute format('delete from pydantic_ai_absurd.lost_executions l where l.queue_name = %L and not exists '
                       '(select 1 from absurd.%I t where t.task_id = l.task_id)', v_queue, 't_' || v_queue);
        perform pydantic_ai_absurd.install_worker_record_triggers(v_queue);
    end loop;
end;
$$;
