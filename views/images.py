"""Images for pages: data-URI PNGs, so uploads are shown back without ever touching the disk."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
from PIL import Image

from models.preprocess import PreprocessError, decode

log = logging.getLogger(__name__)
THUMBNAIL_SIZE = 256
#: Smaller uploads (a 28x28 sample) are enlarged with hard pixel edges so they can be seen.
MIN_SHOWN_SIZE = 128


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Encode a PIL image or a uint8 array as PNG bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(image: Image.Image | np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI for an ``<img src>`` (allowed by our CSP)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def thumbnail_uri(data: bytes, max_pixels: int, size: int = THUMBNAIL_SIZE) -> str | None:
    """The upload, decoded, upright and shrunk to fit ``size`` px; None if it cannot be shown."""
    try:
        image = decode(data, max_pixels=max_pixels)
    except PreprocessError:
        return None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or image.has_transparency_data
    image = image.convert("RGBA" if has_alpha else "RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(image.size) < MIN_SHOWN_SIZE:
        factor = -(-MIN_SHOWN_SIZE // max(image.size))
        enlarged = (image.width * factor, image.height * factor)
        image = image.resize(enlarged, Image.Resampling.NEAREST)
    return data_uri(image)
