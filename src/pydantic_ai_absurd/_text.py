r"""Text that a terminal or Postgres must not get as is: control characters, NUL, lone surrogates.

Shown to an operator: `visible` writes control characters (and lone surrogates, which cannot even be
printed) as escapes; `with_article` for messages. Stored: Postgres refuses NUL in `text` and `jsonb`
(even as the JSON escape `\u0000`) and lone surrogates anywhere (they are not UTF-8). Model- and
tool-provided text may hold both: values are stored in a form that round-trips exactly (`_checkpoint`),
and text that is only shown (previews, failure reasons) is written with escapes (`storable`).
"""

from __future__ import annotations

import re
from typing import cast

__all__ = [
    "has_surrogate",
    "is_storable",
    "json_escaped",
    "storable",
    "unstorable_json",
    "unstorable_text_at",
    "utf8",
    "visible",
    "with_article",
]

# C0 controls (ESC, BEL, CR, backspace...), DEL, C1 controls (a lone 0x9b is a CSI on some terminals), the
# bidirectional overrides and isolates, which reorder what the terminal shows, and lone surrogates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_CONTROL_KEEPING_NEWLINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# What JSON leaves raw with `ensure_ascii=False`: C1 controls, the bidirectional controls and lone surrogates
# (as `\uXXXX` escapes, JSON parsers read them back).
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str, *, keep_newlines: bool = False) -> str:
    r"""`text` with every control character written as an escape (`\x1b`, `\r`, `\u202e`), safe for a terminal.

    Model- and tool-provided text can hold ANSI/OSC sequences that recolour the terminal, set its title or
    erase lines; printed through this, they show as text. Lone surrogates are escaped too (`\ud800`): they
    cannot be written to a UTF-8 terminal at all. `keep_newlines` keeps line breaks (a multi-line report),
    otherwise they are escaped too (a table cell).
    """
    pattern = _CONTROL_KEEPING_NEWLINES if keep_newlines else _CONTROL
    return pattern.sub(_escape, text)


def json_escaped(document: str) -> str:
    r"""JSON text (from `json.dumps(..., ensure_ascii=False)`) with the controls JSON leaves raw written as `\uXXXX`."""
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", document)


def with_article(noun: str) -> str:
    """`noun` with its indefinite article: `a Worker`, `an Inbox`, `an int`."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def storable(text: str) -> str:
    r"""`text` with only what Postgres refuses (NUL, lone surrogates) written as escapes; newlines stay."""
    return text if is_storable(text) else _UNSTORABLE.sub(_escape, text)


def is_storable(text: str) -> bool:
    """Whether Postgres can store `text` as is (no NUL, no lone surrogate)."""
    return "\x00" not in text and not has_surrogate(text)


def has_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate (Python keeps them; UTF-8, JSON and Postgres cannot)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")  # much faster than a regular expression over a long text
    except UnicodeEncodeError:
        return True
    return False


def unstorable_json(text: str) -> bool:
    r"""Whether JSON text (from `json.dumps(..., ensure_ascii=False)`) holds what `jsonb` refuses.

    `\u0000` also matches an escaped backslash followed by `u0000`: callers then only escape needlessly.
    """
    return "\\u0000" in text or has_surrogate(text)


def unstorable_text_at(value: object, path: str) -> str | None:
    """Where in `value` (JSON data) a string holds NUL or a lone surrogate, with a visible excerpt, or None."""
    if isinstance(value, str):
        return None if is_storable(value) else f"{path} = '{visible(value[:60])}'"
    if isinstance(value, dict):
        for key, item in cast(dict[object, object], value).items():
            found = unstorable_text_at(key, f"a key of {path}") or unstorable_text_at(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(cast(list[object], value)):
            found = unstorable_text_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def utf8(text: str) -> bytes:
    """`text` as UTF-8, lone surrogates included (as `surrogatepass` writes them): for hashing only."""
    return text.encode("utf-8", "surrogatepass")
