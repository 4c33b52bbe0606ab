"""Data loading: IDX parsing, the lookup order and its error, ImageFolder trees."""

import gzip
import io
import struct

import numpy as np
import pytest
from PIL import Image

from models import data


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), array)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)


def test_env_dir_comes_first(tmp_path, monkeypatch):
    for (_split, kind), name in data._IDX_FILES.items():
        shape = (3, 28, 28) if kind == "images" else (3,)
        _write_idx(tmp_path / name, np.zeros(shape))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert data.find_fashion_mnist(download=False) == tmp_path
    assert len(data.load_fashion_mnist().train_labels) == 3


def test_not_found_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "TORCHVISION_CACHE", tmp_path / "no-cache")
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.find_fashion_mnist(download=False)
    message = str(err.value)
    assert "FASHION_MNIST_DIR" in message and "dataset-fashion-mnist" in message
    assert "torchvision" in message


def test_fashion_mnist_shapes(fmnist):
    assert fmnist.train_images.shape == (60000, 28, 28)
    assert fmnist.test_images.shape == (10000, 28, 28)
    assert np.bincount(fmnist.test_labels).tolist() == [1000] * 10
    assert len(fmnist.checksum) == 64


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(5):
            arr = np.full((40, 30, 3), 240, np.uint8)
            arr[10:30, 8:22] = rng.integers(0, 120, (20, 14, 3))
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            (tmp_path / name / f"{i}.png").write_bytes(buf.getvalue())
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    ds = data.load_image_folder(tmp_path, test_fraction=0.2)
    assert ds.classes == ("cats", "dogs")
    assert len(ds.train_labels) + len(ds.test_labels) == 10
    assert ds.train_images.shape[1:] == (28, 28)


def test_split_is_disjoint_and_complete():
    fit, val = data.train_val_split(100, 20, seed=3)
    assert len(np.intersect1d(fit, val)) == 0
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(100))
