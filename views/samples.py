"""The sample gallery of the served model version: held-out test images it can be tried on.

A version trained by today's ``ensembles.train`` stores a few test-split images per class
(``gallery.safetensors``, on ``EnsembleBundle.gallery``). A Fashion-MNIST version without one
falls back to Fashion-MNIST's test split, read once per process (gunicorn's preload shares it);
any other version has no gallery and the page asks for an upload. Versions are switched at run
time, so a gallery is built per version, never once per process. A sample is only ever
addressed by an integer index that the form validates, never by a path a user supplies.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ensembles.bundle import EnsembleBundle
from models.data import (
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    find_fashion_mnist,
    gallery_indices,
    read_idx,
)
from models.registry import GALLERY_FILE
from views.images import data_uri, png_bytes

log = logging.getLogger(__name__)
GALLERY_SIZE = 12
#: Versions whose rendered galleries are kept (the serving one, the one before, a few more).
KEEP_VERSIONS = 4
FASHION_MNIST_TEST = "the Fashion-MNIST test set"
_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class SampleSet:
    """Labelled images (uint8, 28x28), the classes their labels index and where they are from."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    origin: str

    def __len__(self) -> int:
        return len(self.labels)

    def png(self, index: int) -> tuple[bytes, int]:
        """One image as PNG bytes (so preprocessing runs for real) and its true class."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return png_bytes(self.images[index]), int(self.labels[index])


@dataclass(frozen=True)
class Sample:
    """One gallery entry."""

    index: int
    label_index: int
    label: str
    uri: str


@dataclass(frozen=True)
class Gallery:
    """What an upload page offers: samples of one version and where they come from."""

    samples: tuple[Sample, ...] = ()
    origin: str = ""


@functools.cache
def test_split() -> SampleSet | None:
    """Read Fashion-MNIST's test split once; None (and a log line) when it is not installed."""
    try:
        directory = find_fashion_mnist(download=False)
        images, labels = (read_idx(directory / name) for name in _TEST_FILES)
    except (DatasetNotFoundError, OSError, ValueError) as exc:
        log.warning("Fashion-MNIST sample gallery disabled: %s", exc)
        return None
    return SampleSet(images, labels.astype(np.int64), FASHION_MNIST_CLASSES, FASHION_MNIST_TEST)


def sample_set(bundle: EnsembleBundle | None) -> SampleSet | None:
    """The images a version's samples come from: its stored gallery, else Fashion-MNIST's test
    split for a Fashion-MNIST version, else none."""
    if bundle is None:
        return None
    if bundle.gallery is not None:
        origin = FASHION_MNIST_TEST if bundle.fashion_mnist else "its held-out test images"
        return SampleSet(bundle.gallery.images, bundle.gallery.labels, bundle.classes, origin)
    return test_split() if bundle.fashion_mnist else None


def simulation_set(bundle: EnsembleBundle | None) -> SampleSet | None:
    """Labelled images to simulate traffic with: all 10,000 Fashion-MNIST test images for a
    Fashion-MNIST version (its gallery holds a few), else the version's stored gallery."""
    split = test_split() if bundle is not None and bundle.fashion_mnist else None
    return split if split is not None else sample_set(bundle)


_galleries: OrderedDict[tuple, Gallery] = OrderedDict()
_lock = threading.Lock()


def _key(bundle: EnsembleBundle) -> tuple:
    """What a rendered gallery depends on: the version, its classes, its data and its file."""
    stored = (bundle.manifest.get("files") or {}).get(GALLERY_FILE)
    return (bundle.version, bundle.classes, bundle.fashion_mnist, stored, bundle.gallery is None)


def gallery(bundle: EnsembleBundle | None) -> Gallery:
    """The samples an upload page offers for ``bundle``'s version, rendered once per version."""
    if bundle is None:
        return Gallery()
    key = _key(bundle)
    with _lock:
        cached = _galleries.get(key)
        if cached is not None:
            _galleries.move_to_end(key)
            return cached
    found = sample_set(bundle)
    if found is None:
        return Gallery()  # not remembered: the test split may be installed later
    built = Gallery(
        samples=tuple(
            Sample(
                index=i,
                label_index=int(found.labels[i]),
                label=found.classes[int(found.labels[i])],
                uri=data_uri(found.images[i]),
            )
            for i in gallery_indices(found.labels, GALLERY_SIZE)
        ),
        origin=found.origin,
    )
    with _lock:
        _galleries[key] = built
        while len(_galleries) > KEEP_VERSIONS:
            _galleries.popitem(last=False)
    return built
