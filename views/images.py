"""Images for pages: data-URI PNGs, so uploads are shown back without ever touching the disk."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PIL import Image

from models.preprocess import PreprocessError, decode
from models.tensor import IMAGE_SIZE

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


def thumbnail_uri(
    data: bytes, max_pixels: int, size: int = THUMBNAIL_SIZE, preview: Image.Image | None = None
) -> str | None:
    """The upload, upright and shrunk to fit ``size`` px; None if it cannot be shown. With the
    ``preview`` preprocessing already decoded it is not decoded again (a JPEG without one is
    decoded at a reduced scale, which costs little)."""
    try:
        image = preview if preview is not None else decode(data, max_pixels, fit=2 * size)
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


class RecentThumbnails:
    """Thumbnails of this process's latest uploads, kept briefly in memory (never on disk).

    The result page is a redirect away from the upload, so the upload's thumbnail is held here
    for ``ttl`` seconds, at most ``size`` of them (oldest dropped first); another worker, a
    restart or an expired entry simply has none, and the page says so.
    """

    def __init__(
        self, size: int = 64, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size, self.ttl, self.clock = size, ttl, clock
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, uri: str | None) -> None:
        """Keep ``uri`` (a data URI) under ``key``; None (an unshowable upload) keeps nothing."""
        if uri is None:
            return
        with self._lock:
            self._items[key] = (self.clock() + self.ttl, uri)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, key: str) -> str | None:
        """The thumbnail under ``key`` if it is still fresh, else None."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._items[key]
                return None
            return entry[1]

    def __len__(self) -> int:
        return len(self._items)


def canvas_uri(canvas: bytes | None, size: int = IMAGE_SIZE) -> str | None:
    """The stored 28x28 model input (row-major uint8 bytes) as a data URI; None if absent."""
    if canvas is None or len(canvas) != size * size:
        return None
    return data_uri(np.frombuffer(canvas, dtype=np.uint8).reshape(size, size))
