"""werkzeug's multipart parser without its per-boundary regular expressions.

``werkzeug.sansio.multipart.MultipartDecoder`` compiles two regular expressions for every new
boundary, and clients make a fresh boundary per request, so each upload paid ~0.7 ms of CPU
for ``re.compile`` before a byte was parsed. ``BoundarySearch`` finds the same matches with
``bytes.find`` and one pattern compiled once (``tests/test_multipart.py`` checks it against
werkzeug's expressions), and ``LeanMultipartDecoder`` uses it. werkzeug's own parse loop
(its part, memory and size limits) runs unchanged: ``MultiPartParser.parse`` and
``FormDataParser._parse_multipart`` are rebound to name the lean classes (``_rebound``).
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from typing import Any

from flask import Request
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.sansio.multipart import MultipartDecoder

#: What follows ``--boundary`` in werkzeug's two expressions: the closing ``--`` (optional
#: line break) or horizontal whitespace and a line break. Group 1, as in werkzeug's.
_AFTER_BOUNDARY = re.compile(rb"(--[^\S\n\r]*(?:\r\n|\n|\r)?|[^\S\n\r]*(?:\r\n|\n|\r))")
_CR, _LF = 13, 10
#: Compiled once and reused: werkzeug's initialiser builds its expressions for this boundary
#: (re's cache makes that free), then the lean search replaces them.
_PLACEHOLDER = b"chorus-placeholder"


class BoundaryMatch:
    """The part of ``re.Match`` werkzeug's decoder reads: ``start``, ``end``, ``group(1)``."""

    __slots__ = ("_start", "_end", "_tail")

    def __init__(self, start: int, end: int, tail: bytes) -> None:
        self._start, self._end, self._tail = start, end, tail

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        if index != 1:
            raise IndexError("no such group")
        return self._tail


class BoundarySearch:
    """``re.compile(rb"LB?--B(TAIL)").search`` (``LB`` required unless ``optional_break``)
    for one boundary ``B``, by ``bytes.find``: the leftmost match, as the expression gives.

    A match's start is the line break before ``--B`` (``\\r\\n``, else one ``\\r`` or ``\\n``)
    or, when the break is optional and absent, ``--B`` itself; ``--B`` cannot recur within
    two bytes of itself unless ``B`` is all dashes (``LeanMultipartDecoder`` leaves those to
    werkzeug), so the first ``--B`` followed by a valid tail starts the leftmost match.
    """

    def __init__(self, boundary: bytes, optional_break: bool) -> None:
        self.delimiter = b"--" + boundary
        self.optional_break = optional_break

    def search(self, buffer: bytes | bytearray, pos: int = 0) -> BoundaryMatch | None:
        delimiter = self.delimiter
        at = buffer.find(delimiter, pos)
        while at != -1:
            tail = _AFTER_BOUNDARY.match(buffer, at + len(delimiter))
            if tail is not None:
                start = self._start(buffer, at, pos)
                if start is not None:
                    return BoundaryMatch(start, tail.end(), tail.group(1))
            at = buffer.find(delimiter, at + 1)
        return None

    def _start(self, buffer: bytes | bytearray, at: int, pos: int) -> int | None:
        """Where a match whose ``--B`` is at ``at`` begins (not before ``pos``), or None."""
        if at - 2 >= pos and buffer[at - 2] == _CR and buffer[at - 1] == _LF:
            return at - 2
        if at - 1 >= pos and buffer[at - 1] in (_CR, _LF):
            return at - 1
        return at if self.optional_break else None


class LeanMultipartDecoder(MultipartDecoder):
    """werkzeug's decoder, its two boundary expressions replaced by ``BoundarySearch``."""

    def __init__(
        self,
        boundary: bytes,
        max_form_memory_size: int | None = None,
        *,
        max_parts: int | None = None,
    ) -> None:
        if not boundary.strip(b"-"):  # all dashes: matches may overlap, keep werkzeug's
            super().__init__(boundary, max_form_memory_size, max_parts=max_parts)
            return
        super().__init__(_PLACEHOLDER, max_form_memory_size, max_parts=max_parts)
        self.boundary = boundary
        self.preamble_re = BoundarySearch(boundary, optional_break=True)  # type: ignore[assignment]
        self.boundary_re = BoundarySearch(boundary, optional_break=False)  # type: ignore[assignment]


def _rebound(function: Callable[..., Any], **names: object) -> Callable[..., Any]:
    """``function`` (werkzeug's code, unchanged) with some of its module's globals replaced."""
    assert isinstance(function, types.FunctionType)
    missing = set(names) - set(function.__code__.co_names)
    if missing:  # a werkzeug upgrade renamed them: fail loudly rather than stay slow
        raise RuntimeError(f"{function.__qualname__} no longer uses {', '.join(sorted(missing))}")
    rebound = types.FunctionType(
        function.__code__,
        {**function.__globals__, **names},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__qualname__ = function.__qualname__
    rebound.__doc__ = function.__doc__
    return rebound


class LeanMultiPartParser(MultiPartParser):
    """werkzeug's ``MultiPartParser`` with ``LeanMultipartDecoder``."""

    parse = _rebound(MultiPartParser.parse, MultipartDecoder=LeanMultipartDecoder)


class LeanFormDataParser(FormDataParser):
    """werkzeug's ``FormDataParser`` with ``LeanMultiPartParser``."""

    _parse_multipart = _rebound(
        FormDataParser._parse_multipart, MultiPartParser=LeanMultiPartParser
    )


class LeanRequest(Request):
    """Flask's request, parsing multipart forms with ``LeanFormDataParser``."""

    form_data_parser_class = LeanFormDataParser
