"""The lean multipart decoder finds what werkzeug's expressions find, and parses the same."""

from __future__ import annotations

import io
import random
import re

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.sansio.multipart import LINE_BREAK

from views.multipart import (
    BoundarySearch,
    LeanFormDataParser,
    LeanMultipartDecoder,
    LeanMultiPartParser,
)

BOUNDARIES = [b"b", b"ab", b"x--x", b"-a", b"a-", b"--xyz", b"-", b"---", b"a b", b"\r", b"\n\n"]


def werkzeug_expressions(boundary: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """The preamble and boundary expressions ``MultipartDecoder.__init__`` compiles."""
    tail = rb"(--[^\S\n\r]*%s?|[^\S\n\r]*%s)" % (LINE_BREAK, LINE_BREAK)
    escaped = re.escape(boundary)
    preamble = re.compile(rb"%s?--%s" % (LINE_BREAK, escaped) + tail, re.MULTILINE)
    inner = re.compile(rb"%s--%s" % (LINE_BREAK, escaped) + tail, re.MULTILINE)
    return preamble, inner


def spans(match: re.Match[bytes] | object | None) -> tuple[int, int, bytes] | None:
    if match is None:
        return None
    return match.start(), match.end(), match.group(1)  # type: ignore[attr-defined]


@pytest.mark.parametrize("boundary", [b for b in BOUNDARIES if b.strip(b"-")])
def test_the_search_matches_werkzeugs_expressions_on_random_buffers(boundary: bytes) -> None:
    """Buffers of line breaks, dashes, spaces and the boundary's own bytes: the first match
    (start, end, tail) is the expression's from every search position."""
    rng = random.Random(boundary)
    preamble, inner = werkzeug_expressions(boundary)
    lean = BoundarySearch(boundary, True), BoundarySearch(boundary, False)
    pieces = [b"\r", b"\n", b"\r\n", b"-", b"--", b" ", b"\t", b"z", b"--" + boundary, boundary]
    for _ in range(3000):
        buffer = bytearray(b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14))))
        pos = rng.randrange(len(buffer) + 1)
        for expression, search in zip((preamble, inner), lean, strict=True):
            assert spans(search.search(buffer, pos)) == spans(expression.search(buffer, pos)), (
                buffer,
                pos,
            )
            assert spans(search.search(buffer)) == spans(expression.search(buffer))


def test_all_dash_boundaries_keep_werkzeugs_expressions() -> None:
    decoder = LeanMultipartDecoder(b"---")
    assert isinstance(decoder.preamble_re, re.Pattern)
    assert isinstance(LeanMultipartDecoder(b"ab").boundary_re, BoundarySearch)


def body(boundary: str, line: str = "\r\n", tail: str = "") -> bytes:
    b = boundary
    return (
        f'preamble{line}--{b}{line}Content-Disposition: form-data; name="strategy"{line}{line}'
        f'bagging{line}--{b}  {line}Content-Disposition: form-data; name="image"; '
        f'filename="a.png"{line}Content-Type: image/png{line}{line}'
        f"\x89PNG{line}--{b}x not the end{line}--{b}--{tail}"
    ).encode("latin-1")


def parsed(parser_class: type[FormDataParser], data: bytes, boundary: str, **limits: int):
    parser = parser_class(silent=False, **limits)
    _, form, files = parser.parse(
        io.BytesIO(data), "multipart/form-data", len(data), {"boundary": boundary}
    )
    uploads = {}
    for name, storages in files.lists():
        uploads[name] = [(f.filename, f.read()) for f in storages]
        for storage in storages:
            storage.close()
    return MultiDict(form).to_dict(flat=False), uploads


CASES = [
    body("xyzzy"),
    body("----WebKitFormBoundary7MA4YWxkTrZu0gW", line="\n"),
    body("a-b", line="\r", tail="\r\nepilogue"),
    body("q", tail="   "),
    b"--b\r\nConte",  # cut short
    b"no boundary at all",
    b"--b--\r\n",  # empty form
    b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nvalue',  # never closed
    b"--b\r\n\r\ndata\r\n--b--",  # no Content-Disposition
]


@pytest.mark.parametrize("data", CASES)
def test_forms_parse_as_werkzeug_parses_them(data: bytes) -> None:
    boundary = "b"
    for candidate in ("xyzzy", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a-b", "q"):
        if f"--{candidate}".encode() in data:
            boundary = candidate
    try:
        want = parsed(FormDataParser, data, boundary)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            parsed(LeanFormDataParser, data, boundary)
        return
    assert parsed(LeanFormDataParser, data, boundary) == want


def test_werkzeugs_limits_still_hold() -> None:
    """The parse loop is werkzeug's: too many parts and too big a field are still 413s."""
    many = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(5)
    )
    with pytest.raises(RequestEntityTooLarge):
        parsed(LeanFormDataParser, many + b"--b--", "b", max_form_parts=3)
    big = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n' + b"v" * 500 + b"\r\n--b--"
    with pytest.raises(RequestEntityTooLarge):
        parsed(LeanFormDataParser, big, "b", max_form_memory_size=100)


def test_the_parser_really_uses_the_lean_decoder() -> None:
    assert LeanMultiPartParser.parse.__globals__["MultipartDecoder"] is LeanMultipartDecoder
    assert LeanFormDataParser._parse_multipart.__globals__["MultiPartParser"] is (
        LeanMultiPartParser
    )


def test_the_app_parses_uploads_with_it(app) -> None:
    from views.multipart import LeanRequest

    assert app.request_class is LeanRequest
