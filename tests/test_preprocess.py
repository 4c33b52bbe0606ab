"""Upload preprocessing: every format and background maps to a Fashion-MNIST-like canvas,
and every kind of bad upload raises its own typed error."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.data import DatasetNotFoundError, find_fashion_mnist, read_idx
from models.preprocess import (
    SUPPORTED_FORMATS,
    BlankImageError,
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    NotANumberPixelsError,
    PreprocessError,
    TruncatedImageError,
    decode,
    preprocess,
    to_uint8_canvas,
)
from models.tensor import MEAN, STD

ITEM, BACKGROUND = 30, 235  # dark item on a light background, as a product photo


def item_mask(width: int = 90, height: int = 120) -> np.ndarray:
    """A tall shirt-like silhouette with one sleeve, so rotations and flips are detectable."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((width // 4, 0, width - 1, height - 1), fill=255)  # body, full height
    draw.rectangle((0, 0, width // 4, height // 3), fill=255)  # left sleeve only
    return np.asarray(mask) > 0


def scene(
    mask: np.ndarray,
    item: int | tuple[int, ...] = ITEM,
    background: int | tuple[int, ...] = BACKGROUND,
    margins: tuple[int, int, int, int] = (40, 25, 30, 55),
    textured: bool = True,
) -> Image.Image:
    """Draw `mask` in colour `item` on `background` with (left, top, right, bottom) margins."""
    left, top, right, bottom = margins
    height, width = mask.shape
    channels = 1 if isinstance(item, int) else len(item)
    shape = (height + top + bottom, width + left + right, channels)
    pixels = np.empty(shape, dtype=np.float32)
    pixels[...] = background
    # Texture: the item gets lighter towards the bottom, so intensities are not binary.
    shade = np.linspace(0.0, 0.5 if textured else 0.0, height, dtype=np.float32)[:, None, None]
    body = np.asarray(item, dtype=np.float32) * (1 - shade) + np.float32(120) * shade
    region = pixels[top : top + height, left : left + width]
    region[mask] = np.broadcast_to(body, (height, width, channels))[mask]
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def bbox(canvas: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the lit pixels."""
    rows = np.flatnonzero((canvas > 0).any(axis=1))
    cols = np.flatnonzero((canvas > 0).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The canvas of the test item from a lossless greyscale PNG: what every variant should give."""
    return to_uint8_canvas(encode(scene(item_mask()), "PNG"))


def test_reference_canvas_looks_like_fashion_mnist(reference: np.ndarray) -> None:
    assert reference.shape == (28, 28) and reference.dtype == np.uint8
    assert reference.max() == 255
    x0, y0, x1, y1 = bbox(reference)
    # Tall item: full height, width 90/120 * 28 = 21 px, centred (spare pixel on the left).
    assert (y0, y1) == (0, 28)
    assert x1 - x0 == 21 and (x0, 28 - x1) == (4, 3)
    # Light item on black: the columns beside the item are background.
    assert reference[:, :x0].max() == 0 and reference[:, x1:].max() == 0
    # The sleeve is top-left: the left quarter is lit at the top, dark at the bottom.
    assert reference[2, x0 + 2] > 100 and reference[25, x0 + 2] == 0


def _palette_with_transparency() -> bytes:
    image = scene(item_mask(), item=(30, 30, 90), background=(0, 255, 0)).quantize(16)
    green = image.getpalette()[: 3 * 16]
    index = min(range(16), key=lambda i: abs(green[3 * i] - 0) + abs(green[3 * i + 1] - 255))
    return encode(image, "PNG", transparency=index)


def _png16() -> bytes:
    grey = np.asarray(scene(item_mask()), dtype=np.uint16) * 257  # full 16-bit range
    return encode(Image.fromarray(grey), "PNG")


def _tiff16() -> bytes:
    grey = np.asarray(scene(item_mask()), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "TIFF")


def _animated_gif() -> bytes:
    first = scene(item_mask()).convert("P")
    second = scene(item_mask()[::-1], item=200, background=10).convert("P")
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _mpo() -> bytes:
    photo = scene(item_mask(), item=(30, 30, 60), background=(240, 235, 220))
    return encode(photo, "MPO", save_all=True, append_images=[photo], quality=95)


def _colour(fmt: str, **params: object):
    return lambda: encode(
        scene(item_mask(), item=(25, 35, 80), background=(242, 232, 212)), fmt, **params
    )


def _grey(fmt: str, **params: object):
    return lambda: encode(scene(item_mask()), fmt, **params)


FORMATS = [
    ("jpeg-rgb", _colour("JPEG", quality=85), 6),
    ("jpeg-grey", _grey("JPEG", quality=85), 6),
    (
        "jpeg-cmyk",
        lambda: encode(
            scene(item_mask(), item=(25, 35, 80), background=(242, 232, 212)).convert("CMYK"),
            "JPEG",
            quality=90,
        ),
        6,
    ),
    ("mpo", _mpo, 6),
    ("png-rgb", _colour("PNG"), 3),
    ("png-grey", _grey("PNG"), 0.5),
    ("png-palette", lambda: encode(scene(item_mask()).convert("RGB").quantize(64), "PNG"), 4),
    ("png-palette-transparent", _palette_with_transparency, 6),
    ("png-16bit-grey", _png16, 0.5),
    ("gif", lambda: encode(scene(item_mask()).convert("P"), "GIF"), 4),
    ("gif-animated", _animated_gif, 4),
    ("webp-lossy", _colour("WEBP", quality=85), 6),
    ("webp-lossless", _colour("WEBP", lossless=True), 3),
    ("bmp", _colour("BMP"), 3),
    ("bmp-grey", _grey("BMP"), 0.5),
    ("tiff-rgb", _colour("TIFF", compression="tiff_lzw"), 3),
    ("tiff-grey", _grey("TIFF"), 0.5),
    ("tiff-16bit-grey", _tiff16, 0.5),
]


@pytest.mark.parametrize(
    ("make", "max_mad"), [(m, b) for _, m, b in FORMATS], ids=[n for n, _, _ in FORMATS]
)
def test_every_format_gives_the_same_canvas(make, max_mad: float, reference: np.ndarray) -> None:
    canvas = to_uint8_canvas(make())
    assert canvas.shape == (28, 28) and canvas.dtype == np.uint8
    assert bbox(canvas) == bbox(reference)
    assert mad(canvas, reference) <= max_mad


@pytest.mark.parametrize(
    ("alpha", "seen_as"), [(0, 255), (40, 215)], ids=["transparent", "translucent"]
)
def test_transparency_is_composited_onto_white(alpha: int, seen_as: int) -> None:
    """Cut-outs are product shots with the white removed: transparency counts as white."""
    rgba = scene(item_mask(), item=(30, 30, 30), background=(0, 0, 0)).convert("RGBA")
    rgba.putalpha(scene(item_mask(), item=255, background=alpha, textured=False))
    opaque = scene(item_mask(), item=(30, 30, 30), background=(seen_as,) * 3)
    expected = to_uint8_canvas(encode(opaque, "PNG"))
    canvas = to_uint8_canvas(encode(rgba, "PNG"))
    assert bbox(canvas) == bbox(expected)
    assert mad(canvas, expected) < 0.5


def test_supported_formats_cover_the_table() -> None:
    decoded = {decode(make()).format for _, make, _ in FORMATS}
    assert decoded == set(SUPPORTED_FORMATS)


@pytest.mark.parametrize(
    ("item", "background"),
    [
        (30, 235),  # dark on white
        (235, 0),  # light on black (Fashion-MNIST's own polarity)
        (220, 60),  # light on dark grey
        ((20, 30, 90), (222, 232, 246)),  # navy on light blue
        ((240, 240, 200), (40, 20, 20)),  # cream on dark brown
        (0, 160),  # black on mid-light grey
    ],
    ids=[
        "dark-on-white",
        "light-on-black",
        "light-on-grey",
        "navy-on-blue",
        "cream-on-brown",
        "black-on-grey",
    ],
)
def test_light_and_dark_backgrounds_give_light_item_on_black(item, background) -> None:
    canvas = to_uint8_canvas(encode(scene(item_mask(), item, background), "PNG"))
    x0, y0, x1, y1 = bbox(canvas)
    assert (y0, y1) == (0, 28) and x1 - x0 == 21
    assert canvas[:, :x0].max() == 0 and canvas[:, x1:].max() == 0
    assert canvas.max() == 255
    # The body is lit throughout; the gap under the sleeve is background.
    assert canvas[14, 14] > 100 and canvas[25, x0 + 1] == 0


@pytest.mark.parametrize("margins", [(0, 0, 300, 200), (250, 180, 3, 5), (5, 300, 200, 0)])
def test_off_centre_item_is_centred(margins, reference: np.ndarray) -> None:
    canvas = to_uint8_canvas(encode(scene(item_mask(), margins=margins), "PNG"))
    assert bbox(canvas) == bbox(reference)
    assert mad(canvas, reference) < 0.5


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(240, 60, (28, 7)), (60, 240, (7, 28)), (150, 100, (28, 19)), (80, 80, (28, 28))],
)
def test_aspect_ratio_is_kept(width: int, height: int, expected: tuple[int, int]) -> None:
    block = np.ones((height, width), dtype=bool)
    canvas = to_uint8_canvas(encode(scene(block), "PNG"))
    x0, y0, x1, y1 = bbox(canvas)
    assert (x1 - x0, y1 - y0) == expected
    # Centred: equal margins, any spare pixel on the left/top as in Fashion-MNIST.
    assert 0 <= x0 - (28 - x1) <= 1 and 0 <= y0 - (28 - y1) <= 1


# EXIF orientation -> how to store the upright picture so that a viewer shows it upright.
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_orientation_is_honoured(orientation: int, fmt: str, reference: np.ndarray) -> None:
    upright = scene(item_mask(), item=(30, 30, 30), background=(235, 235, 235))
    stored = upright.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, fmt, exif=exif, **({"quality": 95} if fmt != "PNG" else {}))
    assert decode(data).size == upright.size
    canvas = to_uint8_canvas(data)
    assert bbox(canvas) == bbox(reference)
    assert mad(canvas, reference) < 5
    # Without the tag the picture would be wrong: the test can tell orientations apart.
    assert mad(to_uint8_canvas(encode(stored, "PNG")), reference) > 20


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"),
        ("P", "GIF"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
        ("I;16", "TIFF"),
        ("F", "TIFF"),
        ("CMYK", "TIFF"),
        ("RGBA", "WEBP"),
    ],
)
def test_large_images_in_every_mode_are_reduced_correctly(mode: str, fmt: str) -> None:
    """Above 1024 px images are box-reduced first; bits, palettes and 16-bit need converting."""
    big = scene(item_mask(600, 800), margins=(300, 200, 150, 150), textured=mode != "1")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(big, dtype=np.uint16) * 257)
    elif mode == "P":
        image = big.convert("RGB").quantize(64)
    elif mode == "1":
        image = big.convert("1", dither=Image.Dither.NONE)
        big = image.convert("L")
    else:
        image = big.convert(mode)
    expected = to_uint8_canvas(encode(big, "PNG"))
    canvas = to_uint8_canvas(encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert bbox(canvas) == bbox(expected)
    assert mad(canvas, expected) < 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_pixels_that_are_not_numbers_is_a_422(bad: float) -> None:
    """NaN or infinity in a 32-bit TIFF reached np.bincount as a negative count: a 500."""
    grey = np.full((64, 64), 200.0, dtype=np.float32)
    grey[20:40, 25:35] = 30.0
    grey[0, 0] = bad
    with pytest.raises(NotANumberPixelsError, match="not numbers") as refused:
        to_uint8_canvas(encode(Image.fromarray(grey), "TIFF"))
    assert refused.value.status_code == 422


def test_a_float_tiff_spanning_the_whole_float32_range_is_rescaled_not_overflowed() -> None:
    """-3e38 to 3e38: their difference overflows float32, which made every pixel NaN."""
    grey = np.full((64, 64), 3e38, dtype=np.float32)
    grey[20:40, 25:35] = -3e38
    canvas = to_uint8_canvas(encode(Image.fromarray(grey), "TIFF"))
    dark_item = to_uint8_canvas(encode(Image.fromarray((grey > 0).astype(np.uint8) * 255), "PNG"))
    assert mad(canvas, dark_item) < 1


def test_damaged_exif_does_not_reject_the_image(reference: np.ndarray) -> None:
    data = encode(scene(item_mask()), "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*\xff\xff")
    assert mad(to_uint8_canvas(data), reference) < 2


def test_decode_keeps_format_and_takes_first_frame() -> None:
    image = decode(_animated_gif())
    assert image.format == "GIF"
    assert image.size == (90 + 40 + 30, 120 + 25 + 55)
    assert mad(to_uint8_canvas(image), to_uint8_canvas(encode(scene(item_mask()), "PNG"))) < 4


def test_pil_image_input_is_accepted(reference: np.ndarray) -> None:
    assert mad(to_uint8_canvas(scene(item_mask())), reference) == 0


def test_preprocess_returns_normalised_tensor(reference: np.ndarray) -> None:
    import torch

    tensor = preprocess(encode(scene(item_mask()), "PNG"))
    assert tensor.shape == (1, 1, 28, 28) and tensor.dtype == torch.float32
    expected = (torch.from_numpy(reference).float() / 255 - MEAN) / STD
    torch.testing.assert_close(tensor[0, 0], expected)
    assert tensor.min().item() == pytest.approx(-MEAN / STD)


def test_large_jpeg_decodes_at_reduced_size() -> None:
    """A 12 MP phone photo decodes through JPEG draft mode (1/8 scale), not at full size."""
    from models import preprocess as module

    small = scene(
        item_mask(150, 200),
        item=(30, 30, 60),
        background=(240, 235, 220),
        margins=(120, 60, 130, 40),
    )
    photo = small.resize((4000, 3000), Image.Resampling.BILINEAR)
    data = encode(photo, "JPEG", quality=90)
    assert decode(data).size == (4000, 3000)
    decoded = module._decode_for_canvas(data, module.DEFAULT_MAX_PIXELS)
    assert max(decoded.size) <= 4000 // 4 and decoded.mode == "L"
    canvas = to_uint8_canvas(data)
    assert canvas.max() == 255


@pytest.fixture(scope="module")
def fashion_mnist() -> np.ndarray:
    try:
        directory = find_fashion_mnist(download=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    return read_idx(directory / "t10k-images-idx3-ubyte.gz")[:300]


@pytest.mark.parametrize("invert", [False, True], ids=["as-is", "inverted"])
def test_fashion_mnist_images_come_back_unchanged(fashion_mnist: np.ndarray, invert: bool) -> None:
    """A model-ready 28x28 upload (or its dark-on-white negative) must not be re-framed."""
    diffs = []
    for image in fashion_mnist:
        upload = 255 - image if invert else image
        diffs.append(mad(to_uint8_canvas(encode(Image.fromarray(upload), "PNG")), image))
    # Only the stretch of a 254 peak to 255 may differ.
    assert max(diffs) < 1.0
    assert np.mean(diffs) < 0.1


def _unit_scale_cases(fashion_mnist: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
    """Signals whose item box spans 28 px: Fashion-MNIST canvases (full frame), and random
    float images with 28-px boxes anywhere, touching the edges or not, tall or wide."""
    cases = [(image.astype(np.float32), (0, 0, 28, 28)) for image in fashion_mnist]
    rng = np.random.default_rng(7)
    for _ in range(300):
        height, width = rng.integers(28, 90, size=2)
        signal = rng.normal(40, 60, size=(height, width)).astype(np.float32)
        short = int(rng.integers(1, 29))
        box_w, box_h = (28, short) if rng.random() < 0.5 else (short, 28)
        x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        cases.append((signal, (x0, y0, x0 + box_w, y0 + box_h)))
    return cases


def test_a_28_pixel_item_is_copied_exactly_as_pil_would_resize_it(
    fashion_mnist: np.ndarray,
) -> None:
    """_fit's unit-scale shortcut gives PIL's output bit for bit (negative values included)."""
    from models import preprocess as module

    for signal, box in _unit_scale_cases(fashion_mnist):
        canvas, scale = module._fit(signal, box)
        assert scale == 1.0
        expected = module._place(module._resample(signal, box, 1.0))
        assert canvas.dtype == expected.dtype == np.float32
        assert np.array_equal(canvas, expected), box


# --- bad uploads --------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG declaring width x height 1-bit pixels with a tiny IDAT: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _truncated(fmt: str, keep: float) -> bytes:
    data = encode(scene(item_mask(300, 400), item=(30, 30, 60), background=(240, 235, 220)), fmt)
    return data[: int(len(data) * keep)]


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
    b'<rect width="20" height="20" fill="black"/></svg>\n'
)

BAD_UPLOADS = [
    ("empty", lambda: b"", EmptyImageError, "empty"),
    ("random-bytes", lambda: np.random.default_rng(0).bytes(5000), NotAnImageError, "not an image"),
    ("text", lambda: b"label,pixel0\n9,0\n" * 50, NotAnImageError, "text"),
    ("html", lambda: b"<!doctype html><html><body>hi</body></html>", NotAnImageError, "text"),
    ("svg", lambda: SVG, NotAnImageError, "SVG is not supported"),
    ("svg-bare", lambda: b"  <svg viewBox='0 0 1 1'></svg>", NotAnImageError, "SVG"),
    ("ico", lambda: encode(scene(item_mask(40, 40)), "ICO"), NotAnImageError, "ICO"),
    (
        "heic",
        lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(500),
        NotAnImageError,
        "HEIC.*JPEG",
    ),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(300), NotAnImageError, "PDF"),
    ("ppm", lambda: encode(scene(item_mask(40, 40)), "PPM"), NotAnImageError, "supported"),
    ("png-truncated", lambda: _truncated("PNG", 0.5), TruncatedImageError, "incomplete"),
    (
        "png-signature-only",
        lambda: b"\x89PNG\r\n\x1a\n\x00\x00",
        TruncatedImageError,
        "looks like a PNG",
    ),
    ("jpeg-truncated", lambda: _truncated("JPEG", 0.5), TruncatedImageError, "incomplete"),
    ("gif-truncated", lambda: _truncated("GIF", 0.3), TruncatedImageError, "incomplete"),
    ("webp-truncated", lambda: _truncated("WEBP", 0.5), TruncatedImageError, "incomplete"),
    ("bomb-50000x50000", lambda: _png_header_only(50_000, 50_000), ImageTooLargeError, "smaller"),
    ("bomb-10000x10000", lambda: _png_header_only(10_000, 10_000), ImageTooLargeError, "smaller"),
    ("over-cap-7000x7000", lambda: _png_header_only(7_000, 7_000), ImageTooLargeError, "7000x7000"),
    (
        "uniform-white",
        lambda: encode(Image.new("RGB", (300, 200), "white"), "JPEG"),
        BlankImageError,
        "blank",
    ),
    (
        "uniform-grey",
        lambda: encode(Image.new("L", (300, 200), 128), "PNG"),
        BlankImageError,
        "blank",
    ),
    (
        "uniform-black-28",
        lambda: encode(Image.new("L", (28, 28), 0), "PNG"),
        BlankImageError,
        "blank",
    ),
    (
        "fully-transparent",
        lambda: encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
        BlankImageError,
        "blank",
    ),
    (
        "noise-only",
        lambda: encode(
            Image.fromarray(
                np.random.default_rng(1).normal(200, 2, (200, 300)).clip(0, 255).astype(np.uint8)
            ),
            "PNG",
        ),
        BlankImageError,
        "blank",
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [(m, e, t) for _, m, e, t in BAD_UPLOADS],
    ids=[n for n, *_ in BAD_UPLOADS],
)
def test_bad_upload_raises_typed_error(make, error: type[PreprocessError], message: str) -> None:
    data = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning (e.g. DecompressionBombWarning) may escape
        with pytest.raises(error, match=f"(?i){message}") as info:
            to_uint8_canvas(data)
        with pytest.raises(error):
            preprocess(data)
    assert isinstance(info.value, PreprocessError) and isinstance(info.value, ValueError)
    assert 400 <= info.value.status_code < 500


@pytest.mark.parametrize("size", [(50_000, 50_000), (10_000, 10_000), (7_000, 7_000)])
def test_bomb_is_rejected_from_the_header_without_decoding(size: tuple[int, int]) -> None:
    # The file holds a header and no pixel data: had it been decoded, the error would be a
    # truncation, so ImageTooLargeError shows the size was refused from the header alone.
    data = _png_header_only(*size)
    with pytest.raises(ImageTooLargeError) as info:
        decode(data)
    assert info.value.status_code == 413


def test_truncated_pil_image_raises_typed_error() -> None:
    image = Image.open(io.BytesIO(_truncated("PNG", 0.5)))  # header parses, pixels do not
    with pytest.raises(TruncatedImageError):
        to_uint8_canvas(image)


def test_max_pixels_is_a_parameter() -> None:
    data = encode(scene(item_mask()), "PNG")  # 160 x 200 = 32,000 pixels
    with pytest.raises(ImageTooLargeError, match="160x200"):
        to_uint8_canvas(data, max_pixels=31_999)
    with pytest.raises(ImageTooLargeError):
        to_uint8_canvas(Image.open(io.BytesIO(data)), max_pixels=31_999)
    assert to_uint8_canvas(data, max_pixels=32_000).shape == (28, 28)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (EmptyImageError, 400),
        (NotAnImageError, 400),
        (TruncatedImageError, 422),
        (ImageTooLargeError, 413),
        (BlankImageError, 422),
    ],
)
def test_errors_carry_http_status_hints(error: type[PreprocessError], status: int) -> None:
    assert issubclass(error, PreprocessError) and error.status_code == status


def test_the_background_median_is_numpys_bit_for_bit() -> None:
    """``_median`` replaces np.median on the request path: same value on odd and even sizes,
    ties, both float precisions, and NaN."""
    import math

    from models.preprocess import _median

    rng = np.random.default_rng(7)
    for trial in range(3000):
        size = int(rng.integers(1, 200))
        dtype = np.float32 if trial % 3 else np.float64
        values = (rng.integers(0, 30, size) + rng.random(size) * (trial % 2)).astype(dtype) * 6.37
        if trial % 40 == 0:
            values[rng.integers(0, size)] = np.nan
        want, got = float(np.median(values)), _median(values)
        assert got == want or (math.isnan(got) and math.isnan(want)), (size, dtype)


def test_to_tensor_of_every_byte_is_the_float_normalisation() -> None:
    """The lookup table gives exactly what dividing and normalising each value gives."""
    import torch

    from models.tensor import normalise_, to_tensor

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    by_ops = normalise_(torch.from_numpy(pixels.astype(np.float32)).div_(255.0)).unsqueeze(1)
    assert torch.equal(to_tensor(pixels), by_ops)
    assert torch.equal(to_tensor(pixels.astype(np.float32)), by_ops)  # other dtypes: the ops
