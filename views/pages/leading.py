"""The form fields sent before an oversized upload, so a 413 page keeps the person's choices.

A body over ``MAX_CONTENT_LENGTH`` is refused before Flask parses it, but a browser sends the
form's fields in document order and the home form's strategy radios come before the file. The
first few KiB of the body are read here, never more, and only complete text fields are kept.
"""

from __future__ import annotations

import logging
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Field, File, MultipartDecoder, Preamble

log = logging.getLogger(__name__)
#: How much of a refused body is read: the CSRF token and the radios fit many times over.
PREFIX_BYTES = 16 * 1024
#: Longest field value kept (strategy names have at most 64 characters).
MAX_VALUE_BYTES = 256


def leading_fields(environ: dict[str, Any], limit: int = PREFIX_BYTES) -> dict[str, str]:
    """The complete text fields at the start of a multipart body (first value of each name)."""
    mimetype, options = parse_options_header(environ.get("CONTENT_TYPE", ""))
    boundary = options.get("boundary")
    stream = environ.get("wsgi.input")
    if mimetype != "multipart/form-data" or not boundary or stream is None:
        return {}
    try:
        prefix = stream.read(limit)
        decoder = MultipartDecoder(boundary.encode("latin-1"), max_form_memory_size=limit)
        decoder.receive_data(prefix)
        return _fields(decoder)
    except (
        OSError,
        ValueError,
        RequestEntityTooLarge,
    ) as exc:  # a cut or malformed body: keep nothing
        log.info("could not read the fields of a refused upload: %s", exc)
        return {}


def _fields(decoder: MultipartDecoder) -> dict[str, str]:
    """Walk the decoder's events up to the first file part or the end of the prefix."""
    fields: dict[str, str] = {}
    name: str | None = None
    value = b""
    while True:
        event = decoder.next_event()
        if isinstance(event, Preamble):
            continue
        if isinstance(event, Field) and not isinstance(event, File):
            name, value = event.name, b""
        elif isinstance(event, Data) and name is not None:
            value += event.data
            if len(value) > MAX_VALUE_BYTES:
                name = None  # too long to be one of our choices
            elif not event.more_data:
                fields.setdefault(name, value.decode("utf-8", "replace"))
                name = None
        elif not isinstance(event, Data):
            return fields  # the prefix ends (NeedData), or a file part or the epilogue begins
