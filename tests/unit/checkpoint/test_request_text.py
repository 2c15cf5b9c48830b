"""The request text a checkpoint stores is the clipped, indented JSON of the request, however it is built."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pydantic_ai_absurd._digest import REQUEST_TEXT_LIMIT, Asked
from pydantic_ai_absurd._text import visible

_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3 * REQUEST_TEXT_LIMIT),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=40), inner, max_size=8),
    max_leaves=60,
)


def _expected(request: object) -> str:
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, indent=1, default=str)
    if len(text) > REQUEST_TEXT_LIMIT:
        text = text[: REQUEST_TEXT_LIMIT - 1] + "…"
    return visible(text, keep_newlines=True)


@settings(max_examples=100, deadline=None)
@given(_JSON)
def test_request_text_is_the_clipped_indented_json(request: object) -> None:
    assert Asked.of(request, "summary").request == _expected(request)


def test_a_long_request_is_clipped_to_the_limit() -> None:
    request = {"items": [{"n": n, "text": "x" * 50} for n in range(1000)]}
    text = Asked.of(request, "summary").request
    assert text == _expected(request)
    assert text is not None and len(text) == REQUEST_TEXT_LIMIT and text.endswith("…")
