"""`pydantic-ai-absurd verify` and `fork`, export/import of recorded tasks, and `assert_replays`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from pydantic_ai_absurd._absurd import registered_handlers
from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.errors import RecordingError
from pydantic_ai_absurd.testing import assert_replays, run_queued
from pydantic_ai_absurd.verify import Handler, export_recorded, fork_origin, import_recorded, recorded_tasks
from tests.helpers.apps.verify_app import App, build_app

TARGET = "tests.helpers.apps.verify_cli_app:absurd"


def record(dsn: str, queue: str) -> str:
    async def go() -> str:
        app = build_app(dsn, queue)
        spawned = await app.absurd.spawn("bill", {"prompt": "bill it"})
        await run_queued(app.absurd)
        await app.absurd.close()
        return str(spawned["task_id"])

    return asyncio.run(go())


def run_cli(monkeypatch: pytest.MonkeyPatch, dsn: str, queue: str, variant: str, *args: str) -> int:
    monkeypatch.setenv("VERIFY_DSN", dsn)
    monkeypatch.setenv("VERIFY_QUEUE", queue)
    monkeypatch.setenv("VERIFY_VARIANT", variant)
    sys.modules.pop("tests.helpers.apps.verify_cli_app", None)
    return main(list(args))


def test_verify_exit_codes(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = record(absurd_dsn, absurd_queue)
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", "verify", TARGET) == 0
    out = capsys.readouterr().out
    assert f"ok       {task_id} bill: 5/5 steps replay" in out and "1 ok, 0 not ok" in out
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "new_prompt", "verify", TARGET) == 1
    out = capsys.readouterr().out
    assert f"DIVERGED {task_id} bill: step 'billing__model.request'" in out and "0 ok, 1 not ok" in out
    args = ("verify", TARGET, "--task", task_id, "--queue", absurd_queue)
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "renamed_tool", *args) == 1
    assert "billing__model.request#2" in capsys.readouterr().out
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "renamed_tool", *args, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    (verdict,) = document["tasks"]
    assert verdict["task_id"] == task_id and verdict["status"] == "diverged" and verdict["ok"] is False
    assert verdict["divergence"]["step"] == "billing__model.request#2"
    # Nothing selected: nothing to verify is fine.
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "renamed_tool", "verify", TARGET, "--state", "failed") == 0
    assert "no recorded task to verify" in capsys.readouterr().out
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", "verify", TARGET, "--state", "runing") == 2
    assert "is not a list of task states" in capsys.readouterr().err


def test_export_then_verify_from_the_file(
    absurd_dsn: str,
    absurd_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    task_id = record(absurd_dsn, absurd_queue)
    fixture = tmp_path / "recorded.json"
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", "verify", TARGET, "--export", str(fixture)) == 0
    assert f"wrote 1 recorded task(s) to {fixture}" in capsys.readouterr().out
    document = json.loads(fixture.read_text())
    assert document["format"] == "pydantic-ai-absurd/recorded-tasks" and document["version"] == 1
    (entry,) = document["tasks"]
    assert entry["task_id"] == task_id and entry["params"] == {"prompt": "bill it"}
    assert len(entry["checkpoints"]) == 5 and "digest" in entry["checkpoints"][0]["state"]
    # The file needs no database: verify it with the database unreachable.
    offline = "postgresql://nobody@127.0.0.1:1/nothing"
    assert run_cli(monkeypatch, offline, absurd_queue, "same", "verify", TARGET, "--from", str(fixture)) == 0
    assert run_cli(monkeypatch, offline, absurd_queue, "swapped", "verify", TARGET, "--from", str(fixture)) == 1
    assert "DIVERGED" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert run_cli(monkeypatch, offline, absurd_queue, "same", "verify", TARGET, "--from", str(bad)) == 2
    assert "is not a file of recorded tasks" in capsys.readouterr().err


def test_round_trip_and_assert_replays(absurd_dsn: str, absurd_queue: str, tmp_path: Path) -> None:
    record(absurd_dsn, absurd_queue)
    fixture = tmp_path / "recorded.json"

    async def export() -> None:
        app = build_app(absurd_dsn, absurd_queue)
        tasks = await recorded_tasks(app.absurd)
        assert export_recorded(fixture, tasks) == 1
        assert import_recorded(fixture) == tasks
        await app.absurd.close()

    asyncio.run(export())
    same = build_app(absurd_dsn, absurd_queue)
    report = assert_replays(same.absurd, fixture)
    assert report.ok and same.model_calls == 0
    renamed = build_app(absurd_dsn, absurd_queue, variant="renamed_tool")
    with pytest.raises(AssertionError, match=r"1 recorded task\(s\) do not replay on this code:\nDIVERGED"):
        assert_replays(renamed.absurd, import_recorded(fixture))
    with pytest.raises(RecordingError, match="Cannot read recorded tasks"):
        assert_replays(same.absurd, tmp_path / "missing.json")


async def test_assert_replays_in_an_async_test(absurd_dsn: str, absurd_queue: str, tmp_path: Path) -> None:
    app = build_app(absurd_dsn, absurd_queue)
    await app.absurd.spawn("bill", {"prompt": "bill it"})
    await run_queued(app.absurd)
    fixture = tmp_path / "recorded.json"
    export_recorded(fixture, await recorded_tasks(app.absurd))
    await app.absurd.close()
    handlers_app = build_app(absurd_dsn, absurd_queue)
    report = await assert_replays(handlers_app.absurd, fixture)
    assert report.ok
    assert assert_replays({"bill": _bill_of(handlers_app)}, fixture).ok
    await handlers_app.absurd.close()


def _bill_of(app: App) -> Handler:
    return registered_handlers(app.absurd)["bill"]


def test_fork_command(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = record(absurd_dsn, absurd_queue)
    base = ("fork", task_id, "--queue", absurd_queue, "--database", absurd_dsn)
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *base, "--at", "7") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid choices: 0-1, 3-5" in err
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *base, "--at", "3", "--params", "{") == 2
    assert "--params is not JSON" in capsys.readouterr().err
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *base, "--at", "3") == 0
    fork_id = capsys.readouterr().out.strip()

    async def origin() -> object:
        app = build_app(absurd_dsn, absurd_queue)
        (task,) = await recorded_tasks(app.absurd, [fork_id])
        await app.absurd.close()
        return fork_origin(task.headers)

    found = asyncio.run(origin())
    assert found is not None and getattr(found, "task_id", None) == task_id and getattr(found, "at_step", None) == 3
    args = (*base, "--at", "0", "--params", '{"prompt": "again"}')
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *args) == 0
    capsys.readouterr()
    # Without --queue, every queue is searched for the task.
    searched = ("fork", task_id, "--at", "1", "--database", absurd_dsn)
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *searched) == 0
    assert capsys.readouterr().out.strip() not in {"", task_id}
    missing = ("fork", "01a23148-0000-7000-8000-000000000000", "--at", "0", "--database", absurd_dsn)
    assert run_cli(monkeypatch, absurd_dsn, absurd_queue, "same", *missing) == 2
    assert "no queue has such a task" in capsys.readouterr().err
