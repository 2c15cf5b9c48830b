"""`Checkpoint`: the one reader and writer of the stored checkpoint format (no database needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic_ai.exceptions import UserError

import pydantic_ai_absurd
from pydantic_ai_absurd._checkpoint import Checkpoint, from_jsonb, jsonb_param
from pydantic_ai_absurd._digest import Asked
from pydantic_ai_absurd.errors import UnserializableResultError


def test_a_value_is_stored_as_json_text_with_what_the_step_was_asked() -> None:
    asked = Asked("d1", "tool 'x'", request='{\n "tool": "x"\n}')
    stored = Checkpoint.of({"b": 1, "a": [None]}, asked=asked).stored()
    assert stored == {
        "json": '{"b":1,"a":[null]}',
        "digest": "d1",
        "asked": "tool 'x'",
        "request": '{\n "tool": "x"\n}',
    }
    read = Checkpoint.read(stored)
    assert (read.value, read.digest, read.asked, read.request, read.error) == (
        {"b": 1, "a": [None]},
        "d1",
        "tool 'x'",
        '{\n "tool": "x"\n}',
        None,
    )


def test_a_value_with_lone_surrogates_is_stored_escaped() -> None:
    stored = Checkpoint.of(["\ud800", "é"]).stored()
    assert list(stored) == ["json_escaped"] and stored["json_escaped"].isascii()
    assert Checkpoint.read(stored).value == ["\ud800", "é"]


def test_a_journaled_failure_is_raised_again() -> None:
    stored = Checkpoint.failure("too big").stored()
    assert stored == {"error": "too big"}
    read = Checkpoint.read(stored)
    assert (read.error, read.has_value, read.value) == ("too big", False, None)
    with pytest.raises(UnserializableResultError, match="too big"):
        read.decode(step="s")


@pytest.mark.parametrize("legacy", ["2026-01-01T00:00:00+00:00", True])
def test_checkpoints_of_development_builds_are_read(legacy: str | bool) -> None:
    read = Checkpoint.read(legacy)
    assert read.has_value and read.value == legacy and read.decode(step="s") == legacy
    assert (read.digest, read.asked, read.error) == (None, None, None)


@pytest.mark.parametrize("state", [None, 3, [1], {"other": 1}, {"json": 1}])
def test_other_states_read_empty_and_do_not_replay(state: object) -> None:
    read = Checkpoint.read(state)
    assert read == Checkpoint() and read.value is None
    with pytest.raises(UserError, match="was not written by pydantic-ai-absurd"):
        read.decode(step="s")


def test_only_one_key_forms_are_read_as_sole_envelopes() -> None:
    assert Checkpoint.read_sole({"json": "1"}) == Checkpoint("1")
    assert Checkpoint.read_sole({"error": "no"}) == Checkpoint(error="no")
    assert Checkpoint.read_sole({"json": "1", "digest": "d"}) is None
    assert Checkpoint.read_sole({"error": "no", "other": 1}) is None
    assert Checkpoint.read_sole("text") is None
    with pytest.raises(ValueError, match="a value or a failure"):
        Checkpoint().stored()


def test_jsonb_envelopes_are_unwrapped_and_other_data_kept() -> None:
    assert jsonb_param({"a": 1}) == '{"a":1}'
    assert jsonb_param("\x00") == '{"json": "\\"\\\\u0000\\""}'
    assert from_jsonb({"json": '"\\u0000"'}) == "\x00"
    assert from_jsonb({"error": "kept"}) == {"error": "kept"}
    assert from_jsonb([1]) == [1]


_KEYS = {"json", "json_escaped", "asked", "digest", "request", "error"}
_UNAMBIGUOUS = {"json", "json_escaped", "asked", "digest"}


def _key_uses(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in _KEYS:
            found.append(f"[{node.slice.value!r}]")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"get", "pop", "setdefault"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in _KEYS
        ):
            found.append(f".{node.func.attr}({node.args[0].value!r})")
        elif isinstance(node, ast.Dict):
            found += [
                f"{{{key.value!r}: ...}}"
                for key in node.keys
                if isinstance(key, ast.Constant) and key.value in _UNAMBIGUOUS
            ]
    return found


def test_no_other_module_reads_or_writes_the_checkpoint_keys() -> None:
    src = Path(pydantic_ai_absurd.__file__).parent
    offenders = {
        str(path.relative_to(src)): uses
        for path in sorted(src.rglob("*.py"))
        if path.name != "_checkpoint.py" and (uses := _key_uses(ast.parse(path.read_text())))
    }
    assert offenders == {}
