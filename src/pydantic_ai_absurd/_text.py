"""Text shown to an operator: control characters made visible, and English articles."""

from __future__ import annotations

import re

__all__ = ["json_escaped", "visible", "with_article"]

# C0 controls (ESC, BEL, CR, backspace...), DEL, C1 controls (a lone 0x9b is a CSI on some terminals) and the
# bidirectional overrides and isolates, which reorder what the terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEPING_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What JSON leaves raw with `ensure_ascii=False`: C1 controls and the bidirectional controls.
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
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
    erase lines; printed through this, they show as text. `keep_newlines` keeps line breaks (a multi-line
    report), otherwise they are escaped too (a table cell).
    """
    pattern = _CONTROL_KEEPING_NEWLINES if keep_newlines else _CONTROL
    return pattern.sub(_escape, text)


def json_escaped(document: str) -> str:
    r"""JSON text (from `json.dumps(..., ensure_ascii=False)`) with the controls JSON leaves raw written as `\uXXXX`."""
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", document)


def with_article(noun: str) -> str:
    """`noun` with its indefinite article: `a Worker`, `an Inbox`, `an int`."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
