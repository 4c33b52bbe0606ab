"""The sample gallery: Fashion-MNIST test images picked deterministically, served by index.

The test split is read once per process (gunicorn's preload shares it) and only ever addressed
by an integer index that the form validates, never by a path a user supplies.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from models.data import FASHION_MNIST_CLASSES, DatasetNotFoundError, find_fashion_mnist, read_idx
from views.images import data_uri, png_bytes

log = logging.getLogger(__name__)
GALLERY_SIZE = 12
_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class SampleSet:
    """Fashion-MNIST's 10,000 test images (uint8, 28x28) and labels, or none."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Sample:
    """One gallery entry."""

    index: int
    label_index: int
    label: str
    uri: str


@functools.cache
def test_split() -> SampleSet | None:
    """Read the test split once; None (and a log line) when the data set is not installed."""
    try:
        directory = find_fashion_mnist(download=False)
        images, labels = (read_idx(directory / name) for name in _TEST_FILES)
    except (DatasetNotFoundError, OSError, ValueError) as exc:
        log.warning("sample gallery disabled: %s", exc)
        return None
    return SampleSet(images=images, labels=labels.astype(np.int64))


def gallery_indices(labels: np.ndarray, size: int = GALLERY_SIZE) -> list[int]:
    """The k-th image of each class in turn (k = 0, 1, ...): every class shown, same every run."""
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    picked: list[int] = []
    for k in range(max(len(idx) for idx in by_class)):
        for idx in by_class:
            if k < len(idx) and len(picked) < size:
                picked.append(int(idx[k]))
    return picked


@functools.cache
def gallery() -> tuple[Sample, ...]:
    """The gallery as data-URI PNGs, built once per process."""
    split = test_split()
    if split is None:
        return ()
    return tuple(
        Sample(
            index=i,
            label_index=int(split.labels[i]),
            label=FASHION_MNIST_CLASSES[int(split.labels[i])],
            uri=data_uri(split.images[i]),
        )
        for i in gallery_indices(split.labels)
    )


def sample_png(index: int) -> tuple[bytes, int]:
    """One test image as PNG bytes (so preprocessing runs for real) and its true class."""
    split = test_split()
    if split is None or not 0 <= index < len(split):
        raise IndexError(index)
    return png_bytes(split.images[index]), int(split.labels[index])
