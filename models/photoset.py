"""The "photo-like" evaluation set: Fashion-MNIST test images rendered as phone-photo uploads.

Models train on plain 28x28 Fashion-MNIST but serve uploads. Rendering each test image the
way a product photo arrives (dark item on a light, tinted background, any size, off-centre,
EXIF-rotated, JPEG/PNG/WebP/...) and scoring the ensembles on it measures the whole serving
path, preprocessing included. Every distortion here is one a faithful pipeline can undo:
no occlusion, no free rotation, no perspective, and the item's outline stays crisp as in a
packshot (a blurred outline would make the item's extent ambiguous by half a pixel, which no
pipeline can recover).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.tensor import IMAGE_SIZE

log = logging.getLogger(__name__)

#: Light backgrounds a product is photographed on (RGB centre, per-channel jitter).
_BACKGROUNDS: tuple[tuple[tuple[int, int, int], int], ...] = (
    ((250, 250, 250), 5),  # near-white
    ((242, 232, 212), 8),  # beige
    ((218, 218, 218), 14),  # light grey
    ((222, 232, 246), 8),  # light blue
)
#: Dark product colours (the darkness of the item carries Fashion-MNIST's intensity).
_ITEM_COLOURS: tuple[tuple[int, int, int], ...] = (
    (12, 12, 14),  # black
    (28, 34, 70),  # navy
    (78, 22, 28),  # burgundy
    (62, 44, 28),  # brown
    (26, 56, 34),  # forest green
    (58, 58, 62),  # charcoal
)
_EXIF_ORIENTATION = 0x0112
#: Stored pixels for an EXIF orientation, so that a correct decoder shows them upright.
_STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
#: (format, probability): mostly JPEG, as phones send; the rest keeps every decoder exercised.
_FORMATS: tuple[tuple[str, float], ...] = (
    ("JPEG", 0.45),
    ("PNG", 0.20),
    ("WEBP", 0.20),
    ("GIF", 0.05),
    ("BMP", 0.05),
    ("TIFF", 0.05),
)


def _coverage(image: np.ndarray, side: int) -> np.ndarray:
    """Fashion-MNIST intensity upscaled (bicubic) to `side` px, as item coverage in [0, 1]."""
    big = Image.fromarray(image, mode="L").resize((side, side), Image.Resampling.BICUBIC)
    # A packshot has a crisp outline: keep the bicubic interior inside the item's silhouette.
    support = Image.fromarray((image > 0).astype(np.uint8) * 255, mode="L")
    mask = support.resize((side, side), Image.Resampling.NEAREST)
    return np.asarray(big, dtype=np.float32) * (np.asarray(mask) > 0) / 255.0


def _pick(rng: np.random.Generator, table: Sequence[tuple[str, float]]) -> str:
    """Draw a name from a (name, probability) table."""
    names = [name for name, _ in table]
    weights = np.array([w for _, w in table], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _encode(
    image: Image.Image, fmt: str, rng: np.random.Generator, exif: Image.Exif | None
) -> bytes:
    """Encode in `fmt` with realistic, randomised settings."""
    out = io.BytesIO()
    extra: dict[str, object] = {} if exif is None else {"exif": exif}
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=int(rng.integers(70, 96)), **extra)
    elif fmt == "WEBP":
        if rng.random() < 0.25:
            image.save(out, "WEBP", lossless=True, **extra)
        else:
            image.save(out, "WEBP", quality=int(rng.integers(75, 96)), **extra)
    elif fmt == "PNG":
        image.save(out, "PNG", compress_level=int(rng.integers(1, 7)), **extra)
    elif fmt == "GIF":
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out, "GIF")
    elif fmt == "BMP":
        image.save(out, "BMP")
    elif fmt == "TIFF":
        compression = ("raw", "tiff_lzw", "tiff_deflate")[int(rng.integers(3))]
        image.save(out, "TIFF", compression=compression)
    else:  # pragma: no cover - the table above is the only caller
        raise ValueError(f"unknown format {fmt}")
    return out.getvalue()


def make_photo_like(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """Render one 28x28 Fashion-MNIST image as the bytes of a plausible product-photo upload."""
    image = np.asarray(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE) or image.dtype != np.uint8:
        raise ValueError(
            f"expected a ({IMAGE_SIZE}, {IMAGE_SIZE}) uint8 image, got {image.shape} {image.dtype}"
        )
    side = int(rng.integers(80, 401))
    cover = _coverage(image, side)
    # Random margins: the item lands off-centre on a non-square frame.
    left, right, top, bottom = (rng.uniform(0.08, 0.9, size=4) * side).astype(int) + 6
    height, width = side + top + bottom, side + left + right
    alpha = np.zeros((height, width), dtype=np.float32)
    alpha[top : top + side, left : left + side] = cover
    alpha = alpha[..., None]

    centre, jitter = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    background = np.array(centre) + rng.integers(-jitter, jitter + 1, size=3)
    item = np.array(_ITEM_COLOURS[int(rng.integers(len(_ITEM_COLOURS)))]) + rng.integers(-8, 9, 3)
    fmt = _pick(rng, _FORMATS)
    cutout = fmt == "PNG" and rng.random() < 0.5
    if cutout:
        # Product cut-out: the item on transparency, as if shot on white and background removed.
        background = np.array([255, 255, 255])
    else:
        # Exposure: mild contrast and brightness error. It is affine, so applying it to the two
        # colours before blending equals applying it to every pixel afterwards.
        contrast, brightness = rng.uniform(0.88, 1.08), rng.uniform(-12.0, 6.0)
        background = (background - 128.0) * contrast + 128.0 + brightness
        item = (item - 128.0) * contrast + 128.0 + brightness
    background = np.clip(background, 0, 255).astype(np.float32)
    item = np.clip(item, 0, 255).astype(np.float32)
    rgb = background + alpha * (item - background)
    if rng.random() < 0.5:  # sensor noise on some shots
        sigma = np.float32(rng.uniform(0.5, 3.0))
        rgb += sigma * rng.standard_normal(size=rgb.shape, dtype=np.float32)
    pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    if cutout:
        opaque = (alpha[..., 0] > 0).astype(np.uint8) * 255
        pixels[opaque == 0] = 0  # transparent pixels hold junk, as many editors leave them
        photo = Image.fromarray(np.dstack([pixels, opaque]), mode="RGBA")
    elif rng.random() < 0.1:
        photo = Image.fromarray(pixels, mode="RGB").convert("L")  # a greyscale shot
    else:
        photo = Image.fromarray(pixels, mode="RGB")

    exif = None
    if fmt in ("JPEG", "PNG", "WEBP") and rng.random() < 0.25:
        orientation = (3, 6, 8)[int(rng.integers(3))]
        photo = photo.transpose(_STORE_TRANSPOSE[orientation])
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = orientation
    return _encode(photo, fmt, rng, exif)


def build_photo_set(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int
) -> list[tuple[bytes, int]]:
    """``n`` (photo bytes, label) pairs drawn from `images`; the same seed gives the same bytes."""
    if not 0 < n <= len(images):
        raise ValueError(f"n must be in 1..{len(images)}, got {n}")
    root = np.random.SeedSequence(seed)
    pick_seq, *item_seqs = root.spawn(n + 1)
    chosen = np.random.default_rng(pick_seq).choice(len(images), size=n, replace=False)
    photos = [
        (make_photo_like(images[index], np.random.default_rng(seq)), int(labels[index]))
        for index, seq in zip(chosen, item_seqs, strict=True)
    ]
    log.info("built %d photo-like images (seed %d)", n, seed)
    return photos
