"""JSON from clients must be text: a lone UTF-16 surrogate (``"\\ud800"``) is valid JSON, but
the string it parses to cannot be encoded, so it failed later, wherever the value was stored
or hashed (a 500). It is refused where the JSON is parsed, with a 400 that says why."""

from __future__ import annotations

import json
import re
from typing import Any

#: Only an escape can make a surrogate (UTF-8 bytes cannot hold one): no match, no walk.
_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


#: What json.loads makes that can hold a string (numbers, bools and null cannot).
_HOLDS_TEXT = frozenset({dict, list, str})


class NotTextError(ValueError):
    """The JSON holds a string with a lone UTF-16 surrogate."""


def loads(text: str | bytes) -> Any:
    """``json.loads``, refusing lone surrogates (``NotTextError``, a ``ValueError``)."""
    value = json.loads(text)
    check(text, value)
    return value


def check(text: str | bytes, value: Any) -> None:
    """Raise ``NotTextError`` if ``value``, parsed from ``text``, holds a lone surrogate."""
    if isinstance(text, bytes | bytearray):
        encoding = json.detect_encoding(text)  # what json.loads read it as
        if encoding != "utf-8":  # UTF-16 or UTF-32: the escape's bytes hold NULs
            text = bytes(text).decode(encoding, "surrogatepass")
    pattern = _ESCAPE_BYTES if isinstance(text, bytes | bytearray) else _ESCAPE_TEXT
    if not pattern.search(text):  # a valid pair parses to one character: only then walk
        return
    stack = [value]
    while stack:  # not recursive: a deep body must not overflow the check
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(v for v in item.values() if type(v) in _HOLDS_TEXT)
        elif isinstance(item, list):  # a V2 tensor's million numbers are skipped in one pass
            stack.extend(v for v in item if type(v) in _HOLDS_TEXT)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise NotTextError(
                    "The JSON holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff "
                    "without its pair), which is not text; send valid Unicode."
                ) from None
