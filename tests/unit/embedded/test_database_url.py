"""`database_url_or_embedded`: the URL from the environment, else the embedded server for the block."""

from __future__ import annotations

from typing import ClassVar

import pytest

from pydantic_ai_absurd import embedded
from pydantic_ai_absurd.embedded import database_url_or_embedded


class _FakeServer:
    """Stands in for `EmbeddedPostgres` (starting a real one is `tests/system/test_embedded.py`'s job)."""

    events: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.dsn = "postgresql:///absurd?host=/tmp/fake"

    def __enter__(self) -> _FakeServer:
        self.events.append("start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.append("close")


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(embedded, "EmbeddedPostgres", _FakeServer)
    _FakeServer.events = []
    return _FakeServer.events


def test_the_environment_wins_and_nothing_starts(monkeypatch: pytest.MonkeyPatch, fake_server: list[str]) -> None:
    monkeypatch.setenv("MY_DB", "postgresql://db.example/app")
    with database_url_or_embedded("MY_DB") as dsn:
        assert dsn == "postgresql://db.example/app"
    assert fake_server == []


def test_without_it_the_embedded_server_runs_for_the_block_even_when_it_raises(
    monkeypatch: pytest.MonkeyPatch, fake_server: list[str]
) -> None:
    monkeypatch.setenv("ABSURD_DATABASE_URL", "")
    seen: list[str] = []

    def use_then_fail() -> None:
        with database_url_or_embedded() as dsn:
            seen.extend([dsn, *fake_server])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_then_fail()
    assert seen == ["postgresql:///absurd?host=/tmp/fake", "start"]
    assert fake_server == ["start", "close"]
