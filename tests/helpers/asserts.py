"""How much of the imported code pytest rewrites the asserts of, in a test process."""

from __future__ import annotations

import sys

from _pytest.assertion.rewrite import AssertionRewritingHook

KEPT = frozenset({"pydantic_ai_absurd.testing"})
"""Marked packages whose assert messages tests read: this library's testing helpers (`assert_replays`)."""


def rewrite_tests_only() -> None:
    """Rewrite the asserts of test modules, conftests and `KEPT` only, not of every package with a pytest plugin.

    pytest rewrites each package that ships a plugin (Hypothesis, AnyIO, xdist, this library, ...) as it is
    imported, and under PYTHONDONTWRITEBYTECODE keeps no cache of it: about 1.5 s of CPU in every test process,
    for asserts no test reads. Modules imported before the call stay as they are; test files and conftests are
    rewritten by their file names, which this leaves alone.
    """
    for hook in sys.meta_path:
        if not isinstance(hook, AssertionRewritingHook):
            continue
        marked = getattr(hook, "_must_rewrite", None)  # pytest's private state: a later pytest may lack it
        cache = getattr(hook, "_marked_for_rewrite_cache", None)
        if not isinstance(marked, set) or not isinstance(cache, dict):
            return
        kept = {name for name in KEPT if any(name == m or name.startswith(m + ".") for m in marked)}
        marked.clear()
        marked.update(kept)
        cache.clear()
