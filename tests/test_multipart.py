"""The lean multipart decoder finds what werkzeug's expressions find, and parses the same."""

from __future__ import annotations

import gc
import io
import random
import re
import warnings

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.sansio.multipart import LINE_BREAK

from views.multipart import (
    BoundarySearch,
    LeanFormDataParser,
    LeanMultipartDecoder,
    LeanMultiPartParser,
    split_whole_body,
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


def test_a_form_refused_half_way_closes_the_files_it_opened() -> None:
    """Two files, then a part over the parts limit: the 413 leaves no file open."""
    opened: list[io.BytesIO] = []

    def factory(*args: object, **kwargs: object) -> io.BytesIO:
        opened.append(io.BytesIO())
        return opened[-1]

    part = b'--b\r\nContent-Disposition: form-data; name="f%d"; filename="x%d.png"\r\n\r\n'
    files = b"".join(part % (i, i) + b"png-bytes\r\n" for i in range(3))
    parser = LeanMultiPartParser(stream_factory=factory, max_form_parts=2, buffer_size=64)
    with pytest.raises(RequestEntityTooLarge):
        parser.parse(io.BytesIO(files + b"--b--"), b"b", None)
    assert len(opened) == 2 and all(f.closed for f in opened)


def test_the_parser_really_uses_the_lean_decoder() -> None:
    assert LeanMultiPartParser._parse.__globals__["MultipartDecoder"] is LeanMultipartDecoder
    assert LeanFormDataParser._streamed.__globals__["MultiPartParser"] is LeanMultiPartParser


def test_the_app_parses_uploads_with_it(app) -> None:
    from views.multipart import LeanRequest

    assert app.request_class is LeanRequest


# --- the whole-body split -----------------------------------------------------------------


def everything(parser_class: type[FormDataParser], data: bytes, boundary: bytes, **limits: int):
    """What a parse gives, down to each file's headers, or the error it raises."""
    try:
        _, form, files = parser_class(silent=False, **limits).parse(
            io.BytesIO(data), "multipart/form-data", len(data), {"boundary": boundary.decode()}
        )
    except (ValueError, RequestEntityTooLarge) as exc:
        return type(exc).__name__, str(exc)
    uploads = []
    for name, storage in files.items(multi=True):
        headers = list(storage.headers.items())
        uploads.append((name, storage.filename, storage.name, headers, storage.read()))
        storage.close()
    return list(form.items(multi=True)), uploads


def werkzeugs(data: bytes, boundary: bytes):
    """werkzeug's own answer: it leaves the files of a form it refuses half-way unclosed, so
    their ResourceWarnings are ignored here, and only here (the lean parser closes them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        answer = everything(FormDataParser, data, boundary)
    return answer


def random_form(rng: random.Random, boundary: bytes) -> bytes:
    """A form as clients send it, its values full of line breaks, dashes and the boundary's
    own bytes, sometimes with extra headers, charsets, odd names and non-ASCII text."""
    noise = [b"\r\n", b"\r", b"\n", b"--", b"-", b" ", b"x", boundary, b"--" + boundary, b"\xff"]
    parts = []
    for i in range(rng.randrange(0, 5)):
        value = b"".join(rng.choice(noise) for _ in range(rng.randrange(0, 8)))
        name = rng.choice([f"f{i}", "image", "strategy", "na me", "ünï", 'q\\"x'])
        disposition = f'form-data; name="{name}"'
        if rng.random() < 0.5:
            disposition += f'; filename="{rng.choice(["a.png", "", "x y.jpg", "ü.png"])}"'
        headers = [f"Content-Disposition: {disposition}"]
        if rng.random() < 0.5:
            headers.append(
                rng.choice(
                    [
                        "Content-Type: image/png",
                        "Content-Type: text/plain; charset=iso-8859-1",
                        "X-Extra:  padded \t",
                    ]
                )
            )
        rng.shuffle(headers)
        head = "\r\n".join(headers).encode()
        parts.append(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n")
    return b"".join(parts) + b"--" + boundary + rng.choice([b"--", b"--\r\n"])


@pytest.mark.parametrize("boundary", [b for b in BOUNDARIES if b"\r" not in b and b"\n" not in b])
def test_random_forms_parse_as_werkzeug_parses_them(boundary: bytes) -> None:
    """Well-formed forms and then the same ones cut, spliced and overwritten at random:
    the lean parser's answer (or error) is werkzeug's, and the split takes a good share."""
    rng = random.Random(boundary)
    whole = 0
    for _ in range(400):
        data = random_form(rng, boundary)
        if rng.random() < 0.4:
            at = rng.randrange(len(data) + 1)
            cut = rng.randrange(at, min(len(data), at + 6) + 1)
            data = (
                data[:at] + rng.choice([b"", b"\r\n", b"\n", b"-", b"--" + boundary]) + data[cut:]
            )
        want = werkzeugs(data, boundary)
        assert everything(LeanFormDataParser, data, boundary) == want, data
        parser = MultiPartParser(max_form_parts=1000)
        split = split_whole_body(data, boundary, parser, len(data))
        if split is not None:
            whole += 1
            for _, storage in split[1].items(multi=True):
                storage.close()
    # Values holding the delimiter, most cut or spliced forms and nearly every form whose
    # boundary is all dashes (its delimiters overlap) are werkzeug's to parse.
    assert whole > 80 or not boundary.strip(b"-")


def test_a_form_as_the_test_client_encodes_it_is_split(image_png: bytes) -> None:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(
        method="POST", data={"strategy": "bagging", "image": (io.BytesIO(image_png), "a.png")}
    )
    environ = builder.get_environ()
    data = environ["wsgi.input"].read()
    boundary = environ["CONTENT_TYPE"].split("boundary=")[1].strip('"').encode()
    assert data.startswith(b"\r\n--" + boundary)  # a line break before the first delimiter
    split = split_whole_body(data, boundary, MultiPartParser(), len(data))
    assert split is not None
    form, files = split
    assert form.to_dict() == {"strategy": "bagging"}
    assert (files["image"].filename, files["image"].read()) == ("a.png", image_png)
    files["image"].close()


def test_the_split_keeps_werkzeugs_limits() -> None:
    fields = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nvalue\r\n' % i for i in range(5)
    )
    data = fields + b"--b--\r\n"
    assert everything(LeanFormDataParser, data, b"b")[0] == [(f"f{i}", "value") for i in range(5)]
    for limits in ({"max_form_parts": 4}, {"max_form_memory_size": 4}):
        assert everything(LeanFormDataParser, data, b"b", **limits) == (
            "RequestEntityTooLarge",
            str(RequestEntityTooLarge()),
        )


def test_a_short_body_is_a_client_disconnect_as_before(client, upload) -> None:
    """A Content-Length longer than the body sent: werkzeug's 400, not a hang or a 500, and
    the file werkzeug had opened for the cut part is closed (a leak fails the test at its
    ``gc.collect``: unclosed files are errors here)."""
    image, name = upload()
    data = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image.read() + b"\r\n--b--\r\n"
    )
    response = client.post(
        "/api/v1/predict",
        data=data[:-10],
        headers={
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(len(data)),
        },
    )
    assert response.status_code == 400
    gc.collect()


def test_a_small_form_over_the_part_or_field_limits_says_which_limit(client) -> None:
    """2,000 tiny fields (111 KB) or one 600 KB text field answered "The upload is larger
    than 10 MB": werkzeug's bare 413. Now the message names the limits it passed."""
    many = [(f"f{i}", b"x") for i in range(2000)]
    big = [("strategy", b"x" * 600_000)]
    for fields in (many, big):
        # Bytes, not the test client's form encoding: it spools a body over 500 KB to a
        # temporary file it never closes (a ResourceWarning of werkzeug's own).
        body = b"".join(
            b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
            % (name.encode(), value)
            for name, value in fields
        )
        body += b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        body += b"x\r\n--b--\r\n"
        response = client.post(
            "/api/v1/predict", data=body, content_type="multipart/form-data; boundary=b"
        )
        assert response.status_code == 413
        error = response.get_json()["error"]
        assert "more than 1000 parts, or a text field over 500 KB" in error, error
        assert "larger than" not in error
        # Chunked (no Content-Length, as a server that ends the stream itself hands it over).
        chunked = client.post(
            "/api/v1/predict",
            input_stream=io.BytesIO(body),
            content_type="multipart/form-data; boundary=b",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert chunked.request.content_length is None
        assert chunked.status_code == 413
        assert "more than 1000 parts" in chunked.get_json()["error"]
    too_big = client.post(
        "/api/v1/predict",
        data=b"x" * (client.application.config["MAX_CONTENT_LENGTH"] + 1),
        content_type="multipart/form-data; boundary=b",
    )
    assert too_big.status_code == 413 and "larger than 10 MB" in too_big.get_json()["error"]
    too_big_chunked = client.post(
        "/api/v1/predict",
        input_stream=io.BytesIO(
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
            + b"x" * client.application.config["MAX_CONTENT_LENGTH"]
            + b"\r\n--b--\r\n"
        ),
        content_type="multipart/form-data; boundary=b",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert too_big_chunked.status_code == 413
    assert "larger than 10 MB" in too_big_chunked.get_json()["error"]
