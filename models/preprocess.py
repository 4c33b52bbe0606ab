"""Upload preprocessing: turn the bytes of a real photo into a Fashion-MNIST-like model input.

Fashion-MNIST items are light on black, trimmed to their bounding box, scaled so the longest
side is 28 px and centred on a 28x28 canvas. Uploads are phone photos and product shots: any
size and format, dark item on a light background, off-centre, EXIF-rotated. This module decodes
them defensively (typed errors, decompression-bomb check before any pixel is decoded) and maps
them onto that distribution. It never opens a filesystem path: input is bytes or a PIL image.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from models.tensor import IMAGE_SIZE, to_tensor

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: PIL format names accepted from uploads (``Image.open`` tries no other decoder).
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF")
#: Decoders ``Image.open`` may try; MPO (multi-picture JPEG from phones) comes from JPEG's.
_OPEN_FORMATS = [fmt for fmt in SUPPORTED_FORMATS if fmt != "MPO"]
#: Largest accepted image, in pixels (width x height): a phone photo at its default resolution
#: (12 MP on most phones, 24 MP on the largest defaults, e.g. 5712x4284), with room to spare.
#: A PNG is decoded in full (~1.4 s and 120 MB for 40 MP RGB on the bench machine), so the cap is
#: what bounds a worker's cost; JPEGs decode at 1/2-1/8 scale (``Image.draft``) and cost little.
DEFAULT_MAX_PIXELS = 25_000_000
#: Photos are reduced (by integer factors) to a longest side between this and twice this
#: before the pixel work: fast, and still many source pixels per output pixel.
WORKING_SIZE = 512
#: On photos, a pixel belongs to the item when it differs from the background by this share of
#: the item's contrast: Fashion-MNIST's own trimming rule, and above JPEG ringing at edges.
_ITEM_THRESHOLD = 0.05
#: ... and by this many background noise standard deviations.
_NOISE_SIGMAS = 5.0
#: Below this contrast (grey levels out of 255) an image counts as blank.
_MIN_CONTRAST = 10.0
#: Area averaging when shrinking: what a camera pixel does, and no ringing around the item.
_FILTER = Image.Resampling.BOX
#: Unsharp-mask amount after shrinking; Fashion-MNIST's own pipeline sharpened after resizing.
_SHARPEN = 0.5

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_HOW_TO_FIX = "Upload a photo of one clothing item as JPEG, PNG, WebP, GIF, BMP or TIFF."


class PreprocessError(ValueError):
    """An upload cannot be turned into a model input; the message says why and what to do."""

    #: HTTP status the web layer should answer with.
    status_code: int = 400


class EmptyImageError(PreprocessError):
    """The upload has no bytes at all."""

    status_code = 400


class NotAnImageError(PreprocessError):
    """The bytes are not a raster image in a supported format."""

    status_code = 400


class TruncatedImageError(PreprocessError):
    """The file starts like an image but is cut short or damaged."""

    status_code = 422


class ImageTooLargeError(PreprocessError):
    """The image declares more pixels than allowed (a decompression bomb or a huge scan)."""

    status_code = 413


class NotANumberPixelsError(PreprocessError):
    """A floating-point image (32-bit TIFF) holds NaN or infinite pixels: no grey level to read."""

    status_code = 422


class BlankImageError(PreprocessError):
    """The image is one flat colour: there is nothing to classify."""

    status_code = 422


def _sniff_format(data: bytes) -> str | None:
    """Name the format a file claims by its magic bytes, to tell damaged images from non-images."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _looks_like_text(data: bytes) -> bool:
    """True when the head of the file decodes as text (HTML, JSON, SVG, CSV, ...)."""
    head = data[:2048]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the 2 KiB boundary.
        try:
            text = head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _unsupported_name(data: bytes) -> str | None:
    """Name common image formats that are deliberately not decoded, for a precise message."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    named = ((b"%PDF", "PDF"), (b"8BPS", "Photoshop (PSD)"), (b"\x00\x00\x01\x00", "ICO"))
    for magic, name in named:
        if data.startswith(magic):
            return name
    return None


def _not_an_image(data: bytes) -> PreprocessError:
    """Pick the most helpful error for bytes that no supported decoder accepts."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in head):
        return NotAnImageError("SVG is not supported, upload a raster image (PNG, JPEG, ...).")
    if _looks_like_text(data):
        return NotAnImageError(f"The file is text, not an image. {_HOW_TO_FIX}")
    claimed = _sniff_format(data)
    if claimed is not None:
        return TruncatedImageError(
            f"The file looks like a {claimed} image but is damaged or incomplete. "
            "Upload it again or export it anew."
        )
    unsupported = _unsupported_name(data)
    if unsupported is not None:
        return NotAnImageError(
            f"{unsupported} files are not supported. Convert the photo to JPEG or PNG and "
            "upload that (phones can save photos as JPEG in their camera settings)."
        )
    return NotAnImageError(f"The file is not an image in a supported format. {_HOW_TO_FIX}")


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    """Build the error for an image whose declared size exceeds the cap."""
    return ImageTooLargeError(
        f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed. "
        "Upload a smaller photo (a few megapixels is plenty)."
    )


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header only and reject empty, unknown, unsupported or oversized files."""
    if not data:
        raise EmptyImageError(f"The uploaded file is empty (0 bytes). {_HOW_TO_FIX}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above twice its limit, raises) on huge headers; both mean too big.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"The image declares too many pixels to decode safely. Upload a smaller photo "
            f"(at most {max_pixels:,} pixels)."
        ) from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile input
        raise _not_an_image(data) from exc
    if image.format not in SUPPORTED_FORMATS:  # defensive: formats= already limits this
        raise NotAnImageError(f"{image.format} images are not supported. {_HOW_TO_FIX}")
    width, height = image.size
    if width < 1 or height < 1:
        raise NotAnImageError(f"The image has no pixels ({width}x{height}). {_HOW_TO_FIX}")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    return image


def declared_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The pixels an upload's header declares, read without decoding it, so a batch's pixel
    budget is checked before any of its files costs a decode; bad files raise as ``analyse``."""
    image = _open(data, max_pixels)
    try:
        width, height = image.size
    finally:
        image.close()
    return width * height


def _upright(image: Image.Image, in_place: bool) -> Image.Image:
    """Undo the EXIF orientation; a damaged EXIF block leaves the pixels as they are."""
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)  # in place keeps .format
            return image
        return ImageOps.exif_transpose(image) or image
    except Exception as exc:  # malformed EXIF raises SyntaxError, struct.error, KeyError, ...
        log.info("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _load(image: Image.Image, in_place: bool = True) -> Image.Image:
    """Decode the first frame's pixels and undo the EXIF orientation, mapping failures."""
    fmt = image.format or "uploaded"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            "The image is too large to decode safely. Upload a smaller photo."
        ) from exc
    except Exception as exc:  # truncated streams raise OSError, SyntaxError, ValueError, ...
        raise TruncatedImageError(
            f"The {fmt} image is damaged or incomplete, so its pixels cannot be read. "
            "Upload it again or export it anew."
        ) from exc
    return _upright(image, in_place)


def decode(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, fit: int | None = None
) -> Image.Image:
    """Decode untrusted upload bytes into an upright PIL image, or raise a typed error; with
    ``fit``, a JPEG decodes at the smallest scale still covering ``fit`` x ``fit`` pixels."""
    image = _open(data, max_pixels)
    if fit is not None and image.format in ("JPEG", "MPO"):
        image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else None, (fit, fit))
    return _load(image)


def _decode_for_canvas(
    data: bytes, max_pixels: int, info: dict[str, Any] | None = None
) -> Image.Image:
    """Decode at a reduced size when the format allows it: a 12 MP JPEG decodes at 1/4 or 1/8."""
    image = _open(data, max_pixels)
    if info is not None:
        width, height = image.size
        info.update(
            width=width,
            height=height,
            aspect=round(width / height, 4) if height else None,
            format=(image.format or "unknown").lower(),
            mode=image.mode,
        )
    if image.format in ("JPEG", "MPO") and max(image.size) >= 2 * WORKING_SIZE:
        width, height = image.size
        longest = max(width, height)
        request = (-(-width * WORKING_SIZE // longest), -(-height * WORKING_SIZE // longest))
        # Greyscale JPEG decoding yields the same luma that convert("L") would compute.
        image.draft("L" if image.mode in ("RGB", "YCbCr") else None, request)
    return _load(image)


def _averageable(image: Image.Image) -> Image.Image:
    """Convert modes whose values cannot be averaged (bits, palette indices, 16-bit)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    if image.mode in ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):
        return image
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def _reduce(image: Image.Image) -> Image.Image:
    """Shrink by an integer factor (box average) to a longest side below 2 * WORKING_SIZE."""
    factor = max(image.size) // WORKING_SIZE
    if factor < 2:
        return image
    return _averageable(image).reduce(factor)


def _has_alpha(image: Image.Image) -> bool:
    """True when some pixels may be (partly) transparent."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data


def _to_grey(image: Image.Image) -> np.ndarray:
    """Grey levels 0-255 as float32, transparency composited onto white (product-shot style)."""
    if _has_alpha(image):
        la = image.convert("RGBA").convert("LA") if image.mode != "LA" else image
        arr = np.asarray(la, dtype=np.float32)
        alpha = arr[..., 1] / 255.0
        return arr[..., 0] * alpha + 255.0 * (1.0 - alpha)
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 257.0
    if image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        if image.mode == "F" and not np.isfinite(arr).all():
            raise NotANumberPixelsError(
                "The image's pixels include values that are not numbers (NaN or infinity, "
                "which only floating-point TIFFs can hold), so it has no grey levels to "
                f"classify. {_HOW_TO_FIX}"
            )
        low, high = float(arr.min()), float(arr.max())
        if image.mode == "F" and high <= 1.0 and low >= 0.0:
            return arr * 255.0
        if low >= 0.0 and high <= 255.0:
            return arr
        if low >= 0.0 and high <= 65535.0:
            return arr / 257.0
        # In float64: the span of two extreme float32 values overflows float32 to infinity.
        span = arr.astype(np.float64) - low
        return (span * (255.0 / max(high - low, 1e-6))).astype(np.float32)
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32)
    try:
        grey = image.convert("L")
    except ValueError:  # modes such as LAB or HSV convert to L only through RGB
        grey = image.convert("RGB").convert("L")
    return np.asarray(grey, dtype=np.float32)


def _border(arr: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a ring `width` px wide around the image."""
    if min(arr.shape) <= 2 * width:
        return arr.ravel()
    return np.concatenate(
        [
            arr[:width].ravel(),
            arr[-width:].ravel(),
            arr[width:-width, :width].ravel(),
            arr[width:-width, -width:].ravel(),
        ]
    )


def _median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a 1-D float array, bit for bit, without np.median's
    generic machinery, which cost more than the rest of a small upload's background."""
    size = values.size
    if size == 0 or values.dtype.kind != "f":
        return float(np.median(values))
    half = size // 2
    # As np.median: the middle one or two in place, and the maximum (a NaN sorts last).
    part = np.partition(values, [half, -1] if size % 2 else [half - 1, half, -1])
    if np.isnan(part[-1]):
        return math.nan
    if size % 2:
        return float(part[half])
    return float((part[half - 1] + part[half]) / 2)  # in the array's precision, as np.mean


def _background(ring: np.ndarray, noise: bool = True) -> tuple[float, float]:
    """Background level and noise (robust sigma) from the border: the mode, not the mean
    (``noise=False``: the level alone, noise NaN).

    Fashion-MNIST items often touch the frame, so up to ~80 % of a 28x28 border can be item;
    the modal 16-level bin of the border is the background in every test image.
    """
    hist = np.bincount(np.clip(ring, 0, 255).astype(np.int64) // 16, minlength=16)
    mode = int(hist.argmax())
    near = ring[(ring >= (mode - 1) * 16) & (ring < (mode + 2) * 16)]
    level = _median(near)
    if not noise:
        return level, math.nan
    return level, 1.4826 * _median(np.abs(near - level))


def _box_blur3(arr: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edge-padded): suppresses pixel noise before thresholding the item."""
    padded = np.pad(arr, 1, mode="edge")
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9.0


def _sharpen(canvas: np.ndarray, amount: float) -> np.ndarray:
    """Unsharp mask with a 3x3 binomial blur: restores the crispness that downscaling removes."""
    padded = np.pad(canvas, 1, mode="edge")
    rows = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    blur = (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4
    return np.maximum(canvas + amount * (canvas - blur), 0)


def _bounding_box(mask: np.ndarray, min_count: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the rows/columns holding at least `min_count` item pixels."""
    rows = np.flatnonzero(mask.sum(axis=1) >= min_count)
    cols = np.flatnonzero(mask.sum(axis=0) >= min_count)
    if rows.size == 0 or cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


#: Median grey-level step between neighbouring pixels above which a featureless image is
#: noise, not a flat colour: 0 for flat colours (PNG or JPEG), 1 for smooth gradients,
#: 8 for Gaussian noise of sigma 8, 75 for uniform noise.
_NOISY_STEP = 3.0


def _blank(grey: np.ndarray) -> BlankImageError:
    """Say what is wrong with a featureless image: one flat colour, or only pixel noise."""
    step = float(np.median(np.abs(np.diff(grey, axis=1)))) if grey.shape[1] > 1 else 0.0
    if step >= _NOISY_STEP:
        return BlankImageError(
            "The image looks like random noise: its pixels vary by about "
            f"{step:.0f} grey levels from one to the next, but no item stands out from the "
            "background, so there is nothing to classify. Upload a photo that shows the "
            "clothing item."
        )
    return BlankImageError(
        "The image is blank (a single flat colour), so there is nothing to classify. "
        "Upload a photo that shows the clothing item."
    )


def _grey_to_canvas(grey: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
    """Map a grey-level photo to a 28x28 light-on-black canvas, Fashion-MNIST style."""
    height, width = grey.shape
    small = max(height, width) <= 4 * IMAGE_SIZE  # about model scale: every pixel matters
    ring_width = int(np.clip(round(min(height, width) * 0.01), 1, 8))
    level, _ = _background(_border(grey, ring_width), noise=False)
    if info is not None:
        info["brightness"] = round(float(grey.mean()) / 255.0, 4)
        info["background"] = "light" if level > 127.5 else "dark"
    if level > 127.5:  # dark item on a light background: make it light on black
        grey = 255.0 - grey
        level = 255.0 - level
    signal = grey - level
    smooth = signal if small else _box_blur3(signal)
    _, noise = _background(_border(smooth, ring_width) + level)
    contrast = float(smooth.max())
    if contrast < max(_MIN_CONTRAST, _NOISE_SIGMAS * noise):
        raise _blank(grey)
    if (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        # Already a model-sized canvas: keep its framing, re-trimming could only lose detail.
        box: tuple[int, int, int, int] | None = (0, 0, width, height)
    else:
        # On photos ignore faint JPEG halos, and rows/columns with a speck or two of noise.
        relative = 0.0 if small else _ITEM_THRESHOLD * contrast
        threshold = max(relative, _NOISE_SIGMAS * noise, 0.5)
        # Blurred AND sharp above threshold: no noise specks, and no halo a pixel wide.
        item = (smooth > threshold) & (signal > threshold)
        box = _bounding_box(item, min_count=1 if small else 3)
    if box is None:
        raise _blank(grey)
    canvas, scale = _fit(signal, box)
    if scale < 1:
        canvas = _sharpen(canvas, _SHARPEN)
    # The item's strongest pixel becomes 255, as in Fashion-MNIST. It is measured before
    # resizing: stretching the blurred 28x28 peak instead would brighten every item.
    canvas *= 255.0 / contrast
    # Background noise, averaged down to 28x28, is cleared so the background is exactly 0.
    residual = noise * scale * 255.0 / contrast
    canvas[canvas < 3.0 * residual] = 0.0
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _fit(signal: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
    """Resize the boxed item so its longest side is 28 px and centre it on a 28x28 canvas."""
    x0, y0, x1, y1 = box
    scale = IMAGE_SIZE / max(x1 - x0, y1 - y0)
    if scale == 1.0:
        # The item already spans 28 px: the box filter at unit scale on whole pixels weighs each
        # pixel 1 and its neighbours 0, so PIL would copy the box bit for bit (what a
        # Fashion-MNIST upload does; tests/test_preprocess.py compares the two).
        return _place(signal[y0:y1, x0:x1]), scale
    return _place(_resample(signal, box, scale)), scale


def _resample(signal: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """The boxed item resized by ``scale`` with PIL (the filter's margin padded with zeros)."""
    height, width = signal.shape
    x0, y0, x1, y1 = box
    box_w, box_h = x1 - x0, y1 - y0
    new_w, new_h = max(1, round(box_w * scale)), max(1, round(box_h * scale))
    # The filter reads a few pixels beyond the box, maybe beyond the image: pad with background.
    margin = int(np.ceil(3 / scale)) + 2
    crop = np.zeros((box_h + 2 * margin, box_w + 2 * margin), dtype=np.float32)
    sy0, sx0 = max(0, y0 - margin), max(0, x0 - margin)
    sy1, sx1 = min(height, y1 + margin), min(width, x1 + margin)
    crop[sy0 - y0 + margin : sy1 - y0 + margin, sx0 - x0 + margin : sx1 - x0 + margin] = signal[
        sy0:sy1, sx0:sx1
    ]
    # Sample exactly new_size / scale source pixels around the item's centre: the short side
    # keeps the same scale as the long one, so the aspect ratio survives the rounding.
    cx, cy = margin + box_w / 2, margin + box_h / 2
    half_w, half_h = new_w / scale / 2, new_h / scale / 2
    source = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    resample = _FILTER if scale <= 1 else Image.Resampling.BICUBIC
    resized = Image.fromarray(crop, mode="F").resize((new_w, new_h), resample, box=source)
    return np.asarray(resized, dtype=np.float32)


def _place(item: np.ndarray) -> np.ndarray:
    """The resized item centred on a black 28x28 float canvas."""
    new_h, new_w = item.shape
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    # Fashion-MNIST puts the odd spare pixel left of and above the item.
    left, top = (IMAGE_SIZE - new_w + 1) // 2, (IMAGE_SIZE - new_h + 1) // 2
    canvas[top : top + new_h, left : left + new_w] = item
    return canvas


def to_uint8_canvas(data: bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Upload bytes (or a PIL image) -> ``(28, 28) uint8``, light item centred on black."""
    if isinstance(data, Image.Image):
        width, height = data.size
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        image = _load(data, in_place=False)  # the caller's image is not modified
    else:
        image = _decode_for_canvas(bytes(data), max_pixels)
    return _grey_to_canvas(_to_grey(_reduce(image)))


@dataclass(frozen=True)
class Preprocessed:
    """The model's 28x28 input plus what the upload looked like (routing rules, monitoring)."""

    canvas: np.ndarray  # (28, 28) uint8
    features: dict[str, Any]  # width height aspect format mode background brightness bytes
    #: The upload upright, in colour, already reduced (longest side < 2 * WORKING_SIZE), so a
    #: page can show it without decoding it again; None for a JPEG decoded in grey (draft).
    preview: Image.Image | None = None


def analyse(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Preprocessed:
    """Upload bytes -> the canvas and the request features that feature rules can read."""
    info: dict[str, Any] = {"bytes": len(data)}
    image = _decode_for_canvas(bytes(data), max_pixels, info)
    reduced = _reduce(image)
    canvas = _grey_to_canvas(_to_grey(reduced), info)
    grey_draft = image.mode == "L" and info["mode"] != "L"  # a colour JPEG decoded as luma
    return Preprocessed(canvas=canvas, features=info, preview=None if grey_draft else reduced)


def preprocess(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Upload bytes -> normalised float tensor ``(1, 1, 28, 28)``, ready for the ensembles."""
    return to_tensor(to_uint8_canvas(data, max_pixels)[None])
