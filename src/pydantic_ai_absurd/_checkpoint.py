"""The one checkpoint format every step kind stores: `Checkpoint` writes it and reads it, and nothing else does.

A checkpoint is a JSON object:

- `{"json": "<text>"}`: the step's value as JSON *text*, not a `jsonb` object: `jsonb` reorders object
  keys, and the replayed messages would then differ byte for byte from the first run's, missing
  provider prompt caches after every recovery. The run continues with the decoded text on the first
  run too, so the first run and a replay see exactly the same value.
- `"digest"` and `"asked"` (optional, beside `"json"`): a hash and a one-line summary of what the step
  was asked (model + messages, tool + arguments). A replay whose request hashes differently fails with
  `ReplayDivergenceError` instead of returning the stored result to the wrong call.
- `{"json_escaped": "<text>"}`: the same, for a value holding lone surrogates (text Postgres cannot store,
  and JSON cannot carry either: it pairs adjacent surrogate escapes into one character). The JSON text
  is stored with Python's `unicode_escape` applied, so it is ASCII and decodes to the exact value.
- `"request"` (optional, with the digest): what the digest covers, as indented JSON text of at most
  `REQUEST_TEXT_LIMIT` characters (a model request: the model and the messages added since the run's
  previous request, without timestamps; a tool call: the tool and its arguments). A divergence shows the
  difference between the recorded text and the new one.
- `{"error": "<message>"}`: a journaled failure (a value that could not be stored as JSON).

A NUL character needs no escaping: the JSON text escapes it, and that text is a plain string inside the
`jsonb` checkpoint. The one-line `"asked"` summary is shown as is, so control characters and surrogates
are written visibly in it (`_text.visible`).

Checkpoints written before this format (a bare ISO time string, a bare `true` for a timed-out wait)
are still read.

What a step was asked (its digest, summary and request text) is computed in `_digest`; this module only
stores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pydantic_ai.exceptions import UserError

from ._text import has_surrogate, unstorable_json
from .errors import UnserializableResultError

__all__ = ["ENVELOPE_TEXT_PREFIXES", "Checkpoint", "Stamp", "from_jsonb", "json_text", "jsonb_param"]

_VALUE_KEY = "json"
_ESCAPED_KEY = "json_escaped"
_ERROR_KEY = "error"
_DIGEST_KEY = "digest"
_ASKED_KEY = "asked"
_REQUEST_KEY = "request"


class Stamp(Protocol):
    """What a step was asked, as stored beside its value (`_digest.Asked` is one)."""

    @property
    def digest(self) -> str:
        """The request's digest."""
        ...

    @property
    def summary(self) -> str:
        """A one-line summary of the request."""
        ...

    @property
    def request(self) -> str | None:
        """What the digest covers, as text."""
        ...


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as stored: the value's JSON text or a journaled failure, and what the step was asked.

    `Checkpoint.read(state)` reads any stored state (fields it lacks are None); `stored()` is what is written.
    """

    text: str | None = None
    """The step's value as JSON text (unescaped when it was stored as `json_escaped`)."""
    error: str | None = None
    """The message of a journaled failure."""
    digest: str | None = None
    asked: str | None = None
    """The one-line summary of what the step was asked."""
    request: str | None = None
    """What the digest covers, as text (at most `_digest.REQUEST_TEXT_LIMIT` characters)."""
    legacy: str | bool | None = None
    """The whole state of a checkpoint of 0.1.0 development builds (a bare ISO time, a bare `true`)."""

    @classmethod
    def of(cls, payload: object, *, asked: Stamp | None = None) -> Checkpoint:
        """The checkpoint of a step that returned `payload` (JSON-compatible data), asked `asked`."""
        if asked is None:
            return cls(json_text(payload))
        return cls(json_text(payload), digest=asked.digest, asked=asked.summary, request=asked.request)

    @classmethod
    def failure(cls, message: str) -> Checkpoint:
        """The checkpoint of a journaled failure: a retry raises `UnserializableResultError(message)` again."""
        return cls(error=message)

    @classmethod
    def read(cls, state: object) -> Checkpoint:
        """Read a stored checkpoint; a state of another shape reads as a checkpoint without any field."""
        if isinstance(state, str | bool):
            return cls(legacy=state)
        if not isinstance(state, dict):
            return cls()
        entries = cast(dict[str, object], state)
        return cls(
            _value_text(entries),
            _text(entries, _ERROR_KEY),
            _text(entries, _DIGEST_KEY),
            _text(entries, _ASKED_KEY),
            _text(entries, _REQUEST_KEY),
        )

    @classmethod
    def read_sole(cls, state: object) -> Checkpoint | None:
        """The checkpoint if `state` is one of its one-key forms (a value or a failure, nothing beside), else None."""
        if not isinstance(state, dict):
            return None
        entries = cast(dict[str, object], state)
        if len(entries) != 1:
            return None
        checkpoint = cls.read(entries)
        return checkpoint if checkpoint.text is not None or checkpoint.error is not None else None

    def stored(self) -> dict[str, str]:
        """The JSON object stored for this checkpoint."""
        if self.text is not None:
            stored = _envelope(self.text)
        elif self.error is not None:
            stored = {_ERROR_KEY: self.error}
        else:
            raise ValueError("a checkpoint stores a value or a failure")
        for key, text in ((_DIGEST_KEY, self.digest), (_ASKED_KEY, self.asked), (_REQUEST_KEY, self.request)):
            if text is not None:
                stored[key] = text
        return stored

    @property
    def has_value(self) -> bool:
        """Whether the checkpoint stores a value (a legacy one included)."""
        return self.text is not None or self.legacy is not None

    @property
    def value(self) -> Any:
        """The value stored (decoded from its JSON text), the legacy state, or None when it stores no value."""
        return json.loads(self.text) if self.text is not None else self.legacy

    def decode(self, *, step: str) -> Any:
        """The value stored, or the journaled failure raised again (`step` names the checkpoint in errors)."""
        if self.has_value:
            return self.value
        if self.error is not None:
            raise UnserializableResultError(self.error)
        raise UserError(
            f"The checkpoint of step {step!r} was not written by pydantic-ai-absurd (or by an incompatible "
            "version of it), so it cannot be replayed. Cancel the task, or retry it with `spawn_new=True`."
        )


def _text(entries: dict[str, object], key: str) -> str | None:
    text = entries.get(key)
    return text if isinstance(text, str) else None


def _value_text(entries: dict[str, object]) -> str | None:
    text = _text(entries, _VALUE_KEY)
    if text is not None:
        return text
    escaped = _text(entries, _ESCAPED_KEY)
    return None if escaped is None else escaped.encode("ascii").decode("unicode_escape")


def json_text(payload: object) -> str:
    """`payload` as compact JSON text (non-ASCII kept as is; NUL and other control characters escaped)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _envelope(text: str) -> dict[str, str]:
    if not has_surrogate(text):
        return {_VALUE_KEY: text}
    return {_ESCAPED_KEY: text.encode("unicode_escape").decode("ascii")}


def jsonb_param(data: object) -> str:
    """JSON text to cast to `jsonb` for `data`: `data` itself, or its envelope if `jsonb` cannot hold it.

    `jsonb` refuses NUL (even escaped) and lone surrogates; data holding them is stored as a one-key
    envelope, `{"json": "<text>"}` or `{"json_escaped": "<text>"}`, which `from_jsonb` reads back.
    """
    text = json_text(data)
    if not unstorable_json(text):
        return text
    return json.dumps(_envelope(text))


ENVELOPE_TEXT_PREFIXES = ('{"json": ', '{"json_escaped": ')
"""How an envelope of `jsonb_param` begins as text (as `jsonb` and `json.dumps` write it)."""


def from_jsonb(value: object) -> Any:
    """The data stored with `jsonb_param` (its envelope unwrapped), from `value` as read from `jsonb`."""
    sole = Checkpoint.read_sole(value)
    return value if sole is None or sole.text is None else json.loads(sole.text)
