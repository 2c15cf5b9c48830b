"""What the CLI prints: control characters from models and tools shown as escapes, tables fitted, colours."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.apps.cli_hostile_app import PAYLOAD, RAW, build

TARGET = "tests.helpers.apps.cli_hostile_app:absurd"


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _waiting_hostile_task(dsn: str, queue: str) -> tuple[AsyncAbsurd, str]:
    absurd = build(dsn, queue)
    spawned = await absurd.spawn("hostile", {"prompt": "look " + PAYLOAD})
    await run_queued(absurd)
    return absurd, str(spawned["task_id"])


def _use_target(monkeypatch: pytest.MonkeyPatch, dsn: str, queue: str, variant: str) -> None:
    monkeypatch.setenv("HOSTILE_DSN", dsn)
    monkeypatch.setenv("HOSTILE_QUEUE", queue)
    monkeypatch.setenv("HOSTILE_VARIANT", variant)
    sys.modules.pop("tests.helpers.apps.cli_hostile_app", None)


def _assert_safe(out: str) -> None:
    assert not any(raw in out for raw in RAW), repr(out)


async def test_every_command_escapes_control_characters(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    absurd, task_id = await _waiting_hostile_task(absurd_dsn, absurd_queue)
    await absurd.close()
    db = ("-d", absurd_dsn, "-q", absurd_queue)
    shown = "\\x1b[31m"

    code, out, _ = await cli(capsys, "inspect", task_id, *db)
    assert code == 0 and shown in out and "\\x1b]0;pwned\\x07" in out
    assert max(len(line) for line in out.splitlines()) <= 100  # escaped before it is fitted
    _assert_safe(out)
    code, out, _ = await cli(capsys, "tasks", *db)
    assert code == 0 and task_id in out
    _assert_safe(out)
    code, out, _ = await cli(capsys, "inbox", *db)
    # The arguments are JSON there (the escapes are JSON's); no Rich markup is applied either.
    assert code == 0 and "\\u001b[31m title\\u001b]0;pwned\\u0007 cr\\r erase\\u001b[2K [bold]markup[/bold]" in out
    _assert_safe(out)
    token = json.loads((await cli(capsys, "inbox", "--json", *db))[1])[0]["token"]
    code, out, _ = await cli(capsys, "deny", token, "--reason", PAYLOAD, *db)
    assert code == 0
    _assert_safe(out)
    code, out, err = await cli(capsys, "approve", PAYLOAD, *db)
    assert code == 2 and err.count("\n") == 1
    _assert_safe(err)
    for json_command in (("inspect", task_id), ("tasks",), ("inbox",)):
        code, out, _ = await cli(capsys, *json_command, "--json", *db)
        assert code == 0
        _assert_safe(out)
        json.loads(out)

    _use_target(monkeypatch, absurd_dsn, absurd_queue, "broken")
    code, out, _ = await cli(capsys, "verify", TARGET, "--task", task_id)
    assert code == 1 and "ERROR" in out and shown in out
    _assert_safe(out)
    code, _, err = await asyncio.to_thread(_usage_error, capsys, "tasks", PAYLOAD)
    assert code == 2 and "unrecognized arguments: red\\x1b[31m" in err
    _assert_safe(err)


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_a_verify_report_is_one_line_per_task() -> None:
    from pydantic_ai_absurd.verify import TaskReplay, VerifyReport

    report = VerifyReport((TaskReplay("t1", "bill", "error", 0, 1, error="line one\nline two " + PAYLOAD),))
    lines = report.describe().splitlines()
    assert len(lines) == 2 and "line one\\nline two red\\x1b[31m" in lines[0]
    _assert_safe(report.describe())


def test_the_worker_log_escapes_control_characters() -> None:
    import logging

    from pydantic_ai_absurd.cli._worker import _VisibleFormatter  # pyright: ignore[reportPrivateUsage]

    record = logging.LogRecord("w", logging.WARNING, __file__, 1, "task %s failed: %s", ("hostile", PAYLOAD), None)
    line = _VisibleFormatter("%(levelname)s %(message)s").format(record)
    assert line.startswith("WARNING task hostile failed: red\\x1b[31m")
    _assert_safe(line)


async def test_json_escapes_what_json_leaves_raw(
    absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    absurd = build(absurd_dsn, absurd_queue)
    spawned = await absurd.spawn("hostile", {"prompt": "csi\x9b2J rtl\u202eevil é"})
    await absurd.close()
    code, out, _ = await cli(capsys, "inspect", str(spawned["task_id"]), "-d", absurd_dsn, "--json")
    assert code == 0 and "\x9b" not in out and "\u202e" not in out and "é" in out
    assert json.loads(out)["params"]["prompt"] == "csi\x9b2J rtl\u202eevil é"


async def _tasks_out(capsys: pytest.CaptureFixture[str], dsn: str, queue: str) -> list[str]:
    code, out, _ = await cli(capsys, "tasks", "-d", dsn, "-q", queue)
    assert code == 0
    return out.splitlines()


async def test_tables_fit_the_width_and_cut_the_right_column(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absurd, task_id = await _waiting_hostile_task(absurd_dsn, absurd_queue)
    await absurd.close()
    monkeypatch.delenv("COLUMNS", raising=False)
    whole = await _tasks_out(capsys, absurd_dsn, absurd_queue)  # a pipe: whole lines
    assert whole[0].split() == ["TASK", "ID", "NAME", "STATE", "ATT", "AGE", "LAST", "STEP"]
    assert whole[1].startswith(task_id) and "sleeping" in whole[1] and "…" not in whole[1]
    for width in (100, 80):
        monkeypatch.setenv("COLUMNS", str(width))
        lines = await _tasks_out(capsys, absurd_dsn, absurd_queue)
        assert max(len(line) for line in lines) <= width, (whole, lines)
        assert lines[1].startswith(task_id) and "sleeping" in lines[1]  # the left columns are whole
    assert lines[1].endswith("…")
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = await cli(capsys, "inbox", "-d", absurd_dsn, "-q", absurd_queue)
    row = out.splitlines()[1]
    assert code == 0 and task_id in row and row.endswith("…")  # tokens and ids are never cut


async def test_states_are_coloured_on_a_terminal_unless_no_color(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absurd, _ = await _waiting_hostile_task(absurd_dsn, absurd_queue)
    await absurd.close()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich's switch for "stdout is a colour terminal"
    lines = await _tasks_out(capsys, absurd_dsn, absurd_queue)
    assert "\x1b[33msleeping" in lines[1]  # yellow
    monkeypatch.setenv("NO_COLOR", "1")
    lines = await _tasks_out(capsys, absurd_dsn, absurd_queue)
    assert "sleeping" in lines[1] and "\x1b[3" not in "".join(lines)


async def test_verify_shows_a_progress_line_on_a_terminal(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydantic_ai_absurd.cli import _deploy

    absurd = build(absurd_dsn, absurd_queue)
    for _ in range(2):
        await absurd.spawn("hostile", {"prompt": "p"})
    await run_queued(absurd)
    await absurd.close()
    _use_target(monkeypatch, absurd_dsn, absurd_queue, "same")
    monkeypatch.setattr(_deploy, "PROGRESS_FROM", 2)
    code, out, err = await cli(capsys, "verify", TARGET)
    assert code == 0 and "2 ok" in out and err == ""  # stderr is no terminal: no progress line
    monkeypatch.setenv("FORCE_COLOR", "1")
    _use_target(monkeypatch, absurd_dsn, absurd_queue, "same")
    code, out, err = await cli(capsys, "verify", TARGET)
    assert code == 0 and "2 ok" in out and "verifying" in err and "2/2" in err
    assert "verifying" not in out
