"""What one big upload costs a worker: seconds and peak memory of preprocessing, and of the HTML
page's whole path (preprocess plus the thumbnail shown back).

`python -m bench.decode [--repeat 3]` builds the images in memory (a 40-megapixel PNG of a dark
item on white, about 170 KB, the security review's case; a 12-megapixel phone-like JPEG; a
12-megapixel PNG), then measures each in a fresh subprocess, three ways: ``preprocess`` and
``page`` with the pixel cap lifted (what decoding costs), ``app`` with the default cap (what a
worker spends on it as served) so the peak resident memory
(``ru_maxrss``) is that one upload's: the figure is the peak minus the process's resident size
just before decoding. The last column says whether the app accepts the image. ``--root`` runs
the measurement on another checkout (e.g. ``git archive HEAD`` unpacked), for before/after.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.load import cpu_model

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

_MEASURE = """
import inspect, io, json, resource, sys, time
from models.preprocess import DEFAULT_MAX_PIXELS, PreprocessError, analyse
from views.images import thumbnail_uri
path, mode, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
base = rss_kb()
times = []
for _ in range(repeat):
    started = time.perf_counter()
    if mode == "app":  # as the app runs it: the default cap may refuse it from the header
        try:
            pre = analyse(data)
        except PreprocessError:
            pass
        times.append(time.perf_counter() - started)
        continue
    pre = analyse(data, max_pixels=10**9)
    if mode == "page":  # the result page: the same upload shown back as a thumbnail
        reuse = "preview" in inspect.signature(thumbnail_uri).parameters
        thumbnail_uri(data, 10**9, **({"preview": pre.preview} if reuse else {}))
    times.append(time.perf_counter() - started)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from PIL import Image
width, height = Image.open(io.BytesIO(data)).size
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_mb": (peak - base) / 1024,
                  "accepted": width * height <= DEFAULT_MAX_PIXELS, "cap": DEFAULT_MAX_PIXELS}))
"""


def item_on_white(width: int, height: int) -> np.ndarray:
    """A dark, slightly textured coat-like shape centred on white: what a product shot is."""
    rgb = np.full((height, width, 3), 245, dtype=np.uint8)
    y0, y1, x0, x1 = height // 5, height * 4 // 5, width * 2 // 5, width * 3 // 5
    rgb[y0:y1, x0:x1] = (40, 60, 90)
    rgb[y0 : y0 + height // 10, x0 - width // 10 : x1 + width // 10] = (40, 60, 90)
    return rgb


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {"optimize": True}
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def measure(path: Path, mode: str, repeat: int, root: Path = ROOT) -> dict:
    """Run one measurement in a fresh interpreter and return its figures."""
    output = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), mode, str(repeat)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print seconds and peak MB per image, for preprocessing alone and for the page path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    args = parser.parse_args(argv)
    log.info("CPU: %s", cpu_model())
    images = {
        "PNG 8000x5000 (40 MP)": encoded(item_on_white(8000, 5000), "PNG"),
        "JPEG 4000x3000 (12 MP)": encoded(item_on_white(4000, 3000), "JPEG"),
        "PNG 4000x3000 (12 MP)": encoded(item_on_white(4000, 3000), "PNG"),
    }
    log.info("%-24s %8s  %-10s %9s %9s  %s", "image", "size", "path", "seconds", "peak MB", "app")
    for name, data in images.items():
        path = args.workdir / f"chorus-decode-{abs(hash(name))}.bin"
        path.write_bytes(data)
        try:
            for mode in ("preprocess", "page", "app"):
                figures = measure(path, mode, args.repeat, args.root)
                log.info(
                    "%-24s %6.0f KB  %-10s %9.3f %9.0f  %s",
                    name,
                    len(data) / 1024,
                    mode,
                    figures["seconds"],
                    figures["peak_mb"],
                    "accepted" if figures["accepted"] else f"refused (cap {figures['cap']:,})",
                )
        finally:
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
