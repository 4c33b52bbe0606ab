"""`python -m ensembles.reference [--version V] [--images 2000]`: an artifact's drift reference.

Drift monitoring (``serving/monitoring.py``) compares a recent window of requests with what the
models saw on images they never trained on. This command takes the first ``--images`` images of
the artifact's blend split (held out from every member), sends each through the upload path a
real request takes (PNG-encoded, then ``models.preprocess.analyse``), and records in the
manifest, under ``reference``: the input statistics of the resulting canvases
(``models.inputs``), and for every built-in ensemble its served confidence per image and its
predicted-class counts. The manifest's own ``reference.command`` says how it was made.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ensembles.bundle import load_bundle
from models.data import load_fashion_mnist, train_val_split
from models.inputs import REFERENCE_DECIMALS, input_statistics
from models.preprocess import analyse
from models.registry import ARTIFACT_ROOT, MANIFEST, resolve_version
from models.tensor import to_tensor

log = logging.getLogger(__name__)
DEFAULT_IMAGES = 2000
BATCH = 256


def blend_images(manifest: dict[str, Any], count: int) -> np.ndarray:
    """The first ``count`` blend-split images of the artifact's own split (uint8 N x 28 x 28)."""
    data = load_fashion_mnist()
    seed = int(manifest["seed"])
    blend_size = int(manifest["data"]["blend_size"])
    _, blend_idx = train_val_split(len(data.train_images), blend_size, seed=seed)
    return data.train_images[blend_idx[:count]]


def as_uploaded(images: np.ndarray) -> np.ndarray:
    """Each image PNG-encoded and preprocessed as an upload is: the canvases the models see."""
    canvases = []
    for image in tqdm(images, desc="upload path", unit="image"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        canvases.append(analyse(buffer.getvalue()).canvas)
    return np.stack(canvases)


def reference(version: str | None, root: Path, count: int) -> dict[str, Any]:
    """The drift reference of one artifact version (nothing written)."""
    bundle = load_bundle(version, root=root)
    canvases = as_uploaded(blend_images(bundle.manifest, count))
    inputs = input_statistics(canvases)
    ensembles: dict[str, Any] = {}
    n_classes = len(bundle.classes)
    for name in tqdm(bundle.strategies, desc="ensembles", unit="ensemble"):
        confidences, predicted = [], []
        for start in range(0, len(canvases), BATCH):
            result = bundle.predict(name, to_tensor(canvases[start : start + BATCH]))
            confidences.append(result.confidences)
            predicted.append(result.predictions)
        classes = np.bincount(np.concatenate(predicted), minlength=n_classes)
        ensembles[name] = {
            "confidence": _rounded(np.concatenate(confidences)),
            "class_counts": [int(c) for c in classes],
        }
    return {
        "version": bundle.version,
        "images": int(len(canvases)),
        "source": "blend split (held out from every member), through the upload path",
        "inputs": {key: _rounded(values) for key, values in inputs.items()},
        "ensembles": ensembles,
    }


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), REFERENCE_DECIMALS) for v in values]


def write_reference(path: Path, body: dict[str, Any], command: str) -> None:
    """Put ``body`` into the manifest at ``path`` (atomically: a reader never sees half)."""
    manifest_path = path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["reference"] = {**body, "command": command, "created_at": _now()}
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, manifest_path.stat().st_mode & 0o777)  # mkstemp makes it private
    os.replace(tmp, manifest_path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def main(argv: list[str] | None = None) -> int:
    """Record the drift reference of an artifact in its manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="artifact version (default: newest)")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACT_ROOT, help="artifact root")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    version = resolve_version(args.version, args.artifacts)
    body = reference(version, args.artifacts, args.images)
    command = "python -m ensembles.reference " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    write_reference(args.artifacts / version, body, command.strip())
    log.info("reference of %d images written to %s", body["images"], args.artifacts / version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
