"""Dataset loading: Fashion-MNIST from IDX files or any ImageFolder tree, as uint8 arrays.

Everything here returns plain numpy arrays so training, evaluation and notebooks share one
format: images ``(N, 28, 28) uint8`` (light item on black, like Fashion-MNIST) and labels
``(N,) int64``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: ``manifest["data"]["dataset"]`` of an artifact trained on Fashion-MNIST (else ``IMAGE_FOLDER``).
FASHION_MNIST = "fashion-mnist"
IMAGE_FOLDER = "image-folder"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chorus"
_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


class DatasetNotFoundError(RuntimeError):
    """No copy of the data set could be found or downloaded."""


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays plus the class names and a checksum of the source files."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    checksum: str
    source: str


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values")
    return array.reshape(shape)


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _idx_dir_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _IDX_FILES.values())


def _torchvision_download(root: Path) -> Path | None:
    """Try torchvision's downloader (works where the internet is reachable)."""
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        log.info("torchvision download failed: %s", exc)
        return None
    raw = root / "FashionMNIST" / "raw"
    return raw if _idx_dir_complete(raw) else None


def find_fashion_mnist(download: bool = True) -> Path:
    """Locate the IDX files: $FASHION_MNIST_DIR, the Debian package, then a torchvision cache."""
    env = os.environ.get("FASHION_MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates += [DEBIAN_DIR, TORCHVISION_CACHE / "FashionMNIST" / "raw"]
    for directory in candidates:
        if _idx_dir_complete(directory):
            return directory
    if download:
        downloaded = _torchvision_download(TORCHVISION_CACHE)
        if downloaded is not None:
            return downloaded
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Either set FASHION_MNIST_DIR to a folder holding the four "
        f"*-ubyte.gz files, or install the Debian package (apt-get install dataset-fashion-mnist, "
        f"files in {DEBIAN_DIR}), or allow torchvision to download it into {TORCHVISION_CACHE} "
        "(needs internet access)."
    )


def load_fashion_mnist(directory: Path | None = None) -> Dataset:
    """Load the 60k/10k Fashion-MNIST split as uint8 arrays."""
    directory = directory or find_fashion_mnist()
    paths = {key: directory / name for key, name in _IDX_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return Dataset(
        train_images=arrays[("train", "images")],
        train_labels=arrays[("train", "labels")].astype(np.int64),
        test_images=arrays[("test", "images")],
        test_labels=arrays[("test", "labels")].astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
        checksum=_sha256_files(list(paths.values())),
        source=str(directory),
    )


def load_image_folder(root: Path, test_fraction: float = 0.15, seed: int = 0) -> Dataset:
    """Load an ImageFolder tree (one sub-folder per class) through the upload preprocessing.

    Images go through the same pipeline as uploads, so a folder of photos trains models that
    see at serve time exactly what they saw in training.
    """
    from models.preprocess import PreprocessError, to_uint8_canvas

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise DatasetNotFoundError(f"{root} needs at least two class sub-folders")
    images, labels, files = [], [], []
    for index, class_dir in enumerate(class_dirs):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            try:
                images.append(to_uint8_canvas(path.read_bytes()))
            except PreprocessError as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            labels.append(index)
            files.append(path)
    if not images:
        raise DatasetNotFoundError(f"no readable images under {root}")
    x = np.stack(images)
    y = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        train_images=x[train],
        train_labels=y[train],
        test_images=x[test],
        test_labels=y[test],
        classes=tuple(d.name for d in class_dirs),
        checksum=_sha256_files(files),
        source=str(root),
    )


def trained_on_fashion_mnist(manifest: Mapping[str, Any]) -> bool:
    """Whether an artifact's data was Fashion-MNIST: ``data.dataset`` says so, and artifacts
    made before it was recorded (whose ``data.source`` is only a path) are known by their classes.
    """
    data = manifest.get("data")
    dataset = data.get("dataset") if isinstance(data, Mapping) else None
    if dataset is not None:
        return dataset == FASHION_MNIST
    return tuple(manifest.get("classes") or ()) == FASHION_MNIST_CLASSES


def gallery_indices(labels: np.ndarray, size: int, per_class: int | None = None) -> list[int]:
    """The k-th image of each class in turn (k = 0, 1, ...; at most ``per_class`` each), up to
    ``size``: every class shown, the same every run."""
    if len(labels) == 0:
        return []
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    rounds = max(len(idx) for idx in by_class)
    picked: list[int] = []
    for k in range(rounds if per_class is None else min(rounds, per_class)):
        for idx in by_class:
            if k < len(idx) and len(picked) < size:
                picked.append(int(idx[k]))
    return picked


def train_val_split(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle indices once and cut a validation block: members never train on it."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])
