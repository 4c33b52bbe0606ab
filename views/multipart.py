"""werkzeug's multipart parser without its per-boundary regular expressions.

``werkzeug.sansio.multipart.MultipartDecoder`` compiles two regular expressions for every new
boundary, and clients make a fresh boundary per request, so each upload paid ~0.7 ms of CPU
for ``re.compile`` before a byte was parsed. ``BoundarySearch`` finds the same matches with
``bytes.find`` and one pattern compiled once (``tests/test_multipart.py`` checks it against
werkzeug's expressions), and ``LeanMultipartDecoder`` uses it. werkzeug's own parse loop
(its part, memory and size limits) runs unchanged: ``MultiPartParser.parse`` and
``FormDataParser._parse_multipart`` are rebound to name the lean classes (``_rebound``).

Before either, a body with a Content-Length of at most ``WHOLE_BODY_MAX`` bytes (every upload
under the image cap) is read at once and split by ``split_whole_body``: a handful of
``bytes`` operations instead of werkzeug's event loop, about a third of a millisecond a
request. It accepts only the shape browsers, curl and requests send (``\r\n`` line breaks,
every ``--boundary`` at a part's edge, no header continuation or bad UTF-8, within the part and
memory limits) and returns what werkzeug would; anything else goes to werkzeug's parser, which
gives its own answer or error.
"""

from __future__ import annotations

import io
import re
import types
from collections.abc import Callable
from typing import IO, Any

from flask import Request
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import File, MultipartDecoder
from werkzeug.wsgi import LimitedStream

from serving import jsontext

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
    """werkzeug's ``MultiPartParser`` with ``LeanMultipartDecoder``; the files of a form it
    refuses half-way (a body cut short, a limit passed) are closed, where werkzeug leaves their
    temporary files to the garbage collector."""

    _parse = _rebound(MultiPartParser.parse, MultipartDecoder=LeanMultipartDecoder)

    def start_file_streaming(self, event: File, total_content_length: int | None) -> IO[bytes]:
        container = super().start_file_streaming(event, total_content_length)
        self._opened.append(container)
        return container

    def parse(
        self, stream: IO[bytes], boundary: bytes, content_length: int | None
    ) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
        self._opened: list[IO[bytes]] = []
        try:
            return self._parse(stream, boundary, content_length)
        except BaseException:
            for container in self._opened:
                container.close()
            raise
        finally:
            self._opened = []


#: Bodies up to this size are read whole and split (``split_whole_body``); bigger ones stream.
WHOLE_BODY_MAX = 1 << 20
_CRLF = b"\r\n"


class LeanFormDataParser(FormDataParser):
    """werkzeug's ``FormDataParser`` with ``split_whole_body``, then ``LeanMultiPartParser``."""

    _streamed = _rebound(FormDataParser._parse_multipart, MultiPartParser=LeanMultiPartParser)

    def _parse_multipart(
        self,
        stream: Any,
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> tuple[Any, MultiDict[str, Any], MultiDict[str, Any]]:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary or content_length is None or content_length > WHOLE_BODY_MAX:
            return self._streamed(stream, mimetype, content_length, options)
        data = stream.read(content_length)
        parser = MultiPartParser(
            stream_factory=self.stream_factory,
            max_form_memory_size=self.max_form_memory_size,
            max_form_parts=self.max_form_parts,
            cls=self.cls,
        )
        split = split_whole_body(data, boundary, parser, content_length)
        if split is not None:
            return stream, *split
        return self._streamed(io.BytesIO(data), mimetype, content_length, options)


def split_whole_body(
    data: bytes, boundary: bytes, parser: MultiPartParser, content_length: int | None
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]] | None:
    """``parser.parse`` of a whole body in the common shape, or None for any other shape."""
    delimiter = b"--" + boundary
    if data.startswith(_CRLF + delimiter):  # werkzeug's own test client opens with a line break
        data = data[2:]
    if not data.startswith(delimiter + _CRLF):
        return None
    chunks = data[len(delimiter) :].split(_CRLF + delimiter)
    # Every --boundary must be one of the split points (else werkzeug may read it differently),
    # each part must follow a plain line break, and the last delimiter must close the form.
    if len(chunks) < 2 or chunks[-1] not in (b"--", b"--\r\n"):
        return None
    if _occurrences(data, delimiter) != len(chunks):
        return None
    limit = parser.max_form_parts
    if limit is not None and len(chunks) - 1 > limit:
        return None
    parts = [_part(chunk, parser) for chunk in chunks[:-1]]
    if None in parts:
        return None
    fields: list[tuple[str, str]] = []
    files: list[tuple[str, FileStorage]] = []
    for name, filename, headers, body in parts:  # type: ignore[misc]
        if filename is None:
            fields.append((name, body.decode(parser.get_part_charset(headers), "replace")))
            continue
        event = File(name=name, filename=filename, headers=headers)
        container = parser.start_file_streaming(event, content_length)
        container.write(body)
        container.seek(0)
        files.append((name, FileStorage(container, filename, name, headers=headers)))
    return parser.cls(fields), parser.cls(files)


def _occurrences(data: bytes, delimiter: bytes) -> int:
    """How often ``delimiter`` occurs in ``data``, overlapping ones too (``bytes.count`` skips
    them: ``--x--x`` occurs twice in ``--x--x--x``)."""
    count, at = 0, data.find(delimiter)
    while at != -1:
        count += 1
        at = data.find(delimiter, at + 1)
    return count


def _part(chunk: bytes, parser: MultiPartParser) -> tuple[str, str | None, Headers, bytes] | None:
    """One part (a line break, headers, a blank line, data) as werkzeug reads it: its name,
    filename (None: a field), headers and data; None for a shape left to werkzeug."""
    end = chunk.find(b"\r\n\r\n", 2)
    if not chunk.startswith(_CRLF) or end == -1:
        return None
    pairs = []
    for line in chunk[2:end].split(_CRLF):
        if not line or b"\r" in line or b"\n" in line or line[:1] in (b" ", b"\t"):
            return None  # bare line breaks, blank lines and continuations: werkzeug's to read
        try:
            name, _, value = line.decode().partition(":")
        except UnicodeDecodeError:
            return None
        pairs.append((name.strip(" \t"), value.strip(" \t")))
    headers = Headers(pairs)
    if "content-disposition" not in headers:
        return None
    _, extra = parse_options_header(headers["content-disposition"])
    filename, body = extra.get("filename"), chunk[end + 4 :]
    limit = parser.max_form_memory_size
    if filename is None and limit is not None and len(body) > limit:
        return None
    return extra.get("name"), filename, headers, body  # type: ignore[return-value]


#: What a JSON body nested too deep for the parser gets (a 400: the client's, not a bug).
TOO_DEEP = "The JSON is nested too deeply; send a flat JSON object."


class LeanRequest(Request):
    """Flask's request, parsing multipart forms with ``LeanFormDataParser``; a JSON body nested
    deeper than the parser recurses is a 400 (Flask lets the ``RecursionError`` through), and so
    is one holding a lone surrogate (``serving.jsontext``)."""

    form_data_parser_class = LeanFormDataParser

    def _load_form_data(self) -> None:
        """werkzeug's parse; a body within the size cap (by its length, or for a chunked one by
        how much was read) refused for werkzeug's part or text field limits says so (its bare
        413 read as "the upload is larger than 10 MB")."""
        try:
            super()._load_form_data()
        except RequestEntityTooLarge as exc:
            cap, length = self.max_content_length, self.content_length
            if exc.description != RequestEntityTooLarge.description:
                raise
            if length is None:  # chunked: over the cap only if the capped stream ran out
                stream = self.stream
                if not isinstance(stream, LimitedStream) or stream.is_exhausted:
                    raise
            elif cap is not None and length > cap:
                raise
            raise RequestEntityTooLarge(
                f"The form has more than {self.max_form_parts} parts, or a text field over "
                f"{(self.max_form_memory_size or 0) // 1000:,} KB: send the image and a few "
                "short fields."
            ) from None

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """Flask's ``get_json``; JSON too deep to parse, or not text, is a 400 even when silent."""
        try:
            value = super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            raise BadRequest(TOO_DEEP) from None
        if value is not None:
            try:
                jsontext.check(self.get_data(cache=True), value)
            except jsontext.NotTextError as exc:
                raise BadRequest(str(exc)) from None
        return value
