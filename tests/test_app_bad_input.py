"""Every bad input on every upload route: a 4xx with a clear message, never a 5xx.

The API answers JSON ``{"error"}``; the pages answer their own upload form again with the message.
Nothing is recorded for a refused upload.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import pytest
from PIL import Image

import store

API = "/api/v1/predict"
FORMS = ["/predict", "/bagging", "/boosting", "/stacking", "/ab"]
ROUTES = [API, *FORMS]
LIMIT_MB = 0.0625  # 64 KB, so "oversize" stays cheap


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in its header: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def white_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Bad:
    """One bad input: the file (None: no file field), and what the API and the forms answer."""

    name: str
    data: bytes | None
    status: int
    api_message: str
    form_message: str
    strategy: str = "ab"
    csrf: bool = False  # send the form without a token to an app that checks CSRF
    only: tuple[str, ...] = tuple(ROUTES)  # the routes where this input can be sent


TRUNCATED = b"TRUNCATED"  # replaced by the first half of a real PNG
VALID = b"VALID"  # replaced by a real PNG
SAME = ""  # the form shows the same message as the API
BAD_INPUTS = [
    Bad("no file", None, 400, 'field named "image"', "Choose an image file to upload"),
    Bad("empty file", b"", 400, "The uploaded file is empty", SAME),
    Bad("text", b"hello, this is not an image\n", 400, "The file is text, not an image", SAME),
    Bad("binary junk", bytes(range(256)) * 4, 400, "not an image in a supported format", SAME),
    Bad("truncated png", TRUNCATED, 422, "damaged or incomplete", SAME),
    Bad("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', 400, "SVG", SAME),
    Bad("decompression bomb", png_header_only(60_000, 60_000), 413, "too many pixels", SAME),
    Bad("blank image", white_png(), 422, "The image is blank", SAME),
    # Over MAX_UPLOAD_MB but within the request limit, then over the request limit too.
    Bad("oversize", b"\x89PNG" + b"0" * 70 * 1024, 413, "larger than", "the limit is"),
    Bad("far oversize", b"\x89PNG" + b"0" * 400 * 1024, 413, "larger than", SAME),
    # Only the API and the home form take a strategy (the home form's radio defaults to bagging).
    Bad(
        "unknown strategy",
        VALID,
        400,
        "Unknown strategy",
        "Not a valid choice",
        "random",
        only=(API, "/predict"),
    ),
    Bad("missing strategy", VALID, 400, '"strategy" is required', SAME, "", only=(API,)),
    Bad("missing csrf", VALID, 400, "", "The CSRF token is missing", csrf=True, only=tuple(FORMS)),
]
CASES = [
    pytest.param(bad, route, id=f"{route}-{bad.name}") for bad in BAD_INPUTS for route in bad.only
]


@pytest.mark.parametrize(("bad", "route"), CASES)
def test_bad_input_is_a_clear_4xx(make_app, image_png, bad, route):
    app = make_app(MAX_UPLOAD_MB=LIMIT_MB, WTF_CSRF_ENABLED=bad.csrf)
    data = {TRUNCATED: image_png[: len(image_png) // 2], VALID: image_png}.get(bad.data, bad.data)
    fields: dict[str, object] = {"strategy": bad.strategy}
    if data is not None:
        fields["image"] = (io.BytesIO(data), "upload.png")

    response = app.test_client().post(route, data=fields)

    assert response.status_code == bad.status
    if route == API:
        assert response.is_json and set(response.get_json()) == {"error"}
        assert bad.api_message in response.get_json()["error"]
    else:
        html = response.get_data(as_text=True)
        assert 'class="card upload"' in html and 'role="alert"' in html  # the form again
        assert (bad.form_message or bad.api_message) in html
    with app.app_context():
        assert store.total_predictions(store.get_session()) == 0
