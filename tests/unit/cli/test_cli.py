"""The CLI in-process: `init` and its one-line errors, the parser."""

from __future__ import annotations

import pytest

from pydantic_ai_absurd.cli import build_parser, main
from pydantic_ai_absurd.schema import ABSURD_SCHEMA_VERSION, redact_dsn


def test_init_prints_one_line_per_action(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--database", empty_db, "--queue", "a", "-q", "b"]) == 0
    where = redact_dsn(empty_db)
    from pydantic_ai_absurd.schema._tables import own_migrations

    migrations = ", ".join(name for name, _ in own_migrations())
    assert capsys.readouterr().out.splitlines() == [
        f"Installed Absurd schema {ABSURD_SCHEMA_VERSION} in {where}",
        "Created queue 'a'",
        "Created queue 'b'",
        f"Applied pydantic_ai_absurd migrations: {migrations}",
    ]
    assert main(["init", "--database", empty_db, "--queue", "a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Absurd schema already at {ABSURD_SCHEMA_VERSION} in {where}",
        "Queue 'a' already exists",
    ]


def test_init_uses_env_dsn(empty_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ABSURD_DATABASE_URL", empty_db)
    assert main(["init"]) == 0
    assert "Installed Absurd schema" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["init", "-d", "postgresql://postgres@127.0.0.1:1/absurd"], "Cannot reach Postgres at"),
        (["init", "-d", "postgresql://postgres@127.0.0.1:1/absurd", "-q", "x" * 60], "at most 57 bytes"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pydantic-ai-absurd: error: ")
    assert expected in lines[0]


def test_parser_has_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["dev", "-q", "x", "--data-dir", "/tmp/x"])
    assert args.queue == ["x"]
    with pytest.raises(SystemExit):
        parser.parse_args([])
