"""Issue 12, "Your own classes": a folder of three classes of light-background RGB JPEGs is
trained by the real CLI into a version named after the folder, with its own held-out gallery,
and served end to end: the home page shows its classes and samples (nothing of Fashion-MNIST),
the API and the page form predict, and feedback takes its class names only."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flask import Flask
from PIL import Image, ImageDraw

from ensembles.train import parse_args, train
from models.data import load_image_folder
from models.registry import GALLERY_FILE, MANIFEST, load_artifact, sha256_file
from views.samples import FASHION_MNIST_TEST

CLASSES = ("circle", "square", "triangle")
PER_CLASS = 60
#: Tiny settings as in ``tests/ml/conftest.py``; members learn these shapes in a few steps.
OWN_ARGS = [
    "--stages",
    "4,8",
    "--epochs",
    "5",
    "--batch-size",
    "16",
    "--bagging-members",
    "2",
    "--boosting-members",
    "2",
    "--val-size",
    "30",
    "--photo-size",
    "0",
    "--device",
    "cpu",
]


def shape_jpeg(kind: str, rng: np.random.Generator) -> bytes:
    """One dark, coloured shape of ``kind`` on a light background, placed and sized at random."""
    side = 96
    background = tuple(int(v) for v in rng.integers(225, 256, 3))
    image = Image.new("RGB", (side, side), background)
    colour = tuple(int(v) for v in rng.integers(0, 120, 3))
    size = int(rng.integers(40, 70))
    x0, y0 = (int(v) for v in rng.integers(8, side - size - 8, 2))
    x1, y1 = x0 + size, y0 + size
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_folder(root: Path) -> Path:
    """An ImageFolder tree: one sub-folder of PER_CLASS JPEGs per class."""
    rng = np.random.default_rng(12)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(PER_CLASS):
            (root / kind / f"{i:03d}.jpg").write_bytes(shape_jpeg(kind, rng))
    return root


def test_own_classes_train_serve_predict_and_feedback(
    make_app: Callable[..., Flask], tmp_path: Path, admin_headers: dict
) -> None:
    data = make_folder(tmp_path / "My Shapes!")
    artifacts = tmp_path / "artifacts"
    path = train(parse_args([*OWN_ARGS, "--data", str(data), "--artifacts", str(artifacts)]))

    version = path.name
    assert re.fullmatch(r"my-shapes-\d{8}-\d{6}", version), version
    artifact = load_artifact(version, artifacts)
    assert artifact.manifest["files"][GALLERY_FILE] == sha256_file(path / GALLERY_FILE)
    assert artifact.gallery_error is None and artifact.manifest["data"]["dataset"] == "image-folder"
    images, labels, indices = (artifact.gallery[k] for k in ("images", "labels", "indices"))
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert sorted(set(labels.tolist())) == [0, 1, 2] and max(np.bincount(labels)) <= 4
    held_out = load_image_folder(data, seed=0)  # the split training made: same seed
    np.testing.assert_array_equal(images, held_out.test_images[indices])
    np.testing.assert_array_equal(labels, held_out.test_labels[indices])

    app = make_app(BUNDLE=None, ARTIFACT_ROOT=artifacts, RUNTIME="torch")
    client = app.test_client()
    home = client.get("/").get_data(as_text=True)
    assert all(f"<strong>{name}</strong>" in home for name in CLASSES)
    assert home.count('name="sample"') == len(labels)  # 3 classes x 4: the page shows all 12
    assert all(f'alt="{name}"' in home for name in CLASSES)
    assert "Ankle boot" not in home and "Fashion-MNIST" not in home

    jpeg = (data / "square" / "000.jpg").read_bytes()
    answer = client.post(
        "/api/v1/predict",
        data={"image": (io.BytesIO(jpeg), "square.jpg"), "strategy": "bagging"},
    )
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["model_version"] == version and set(body["probabilities"]) == set(CLASSES)

    posted = client.post(
        "/predict", data={"image": (io.BytesIO(jpeg), "square.jpg"), "strategy": "stacking"}
    )
    assert posted.status_code == 303
    assert re.fullmatch(r"/predictions/[0-9a-f]{32}", posted.headers["Location"])
    result = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert "Ankle boot" not in result and all(name in result for name in CLASSES)
    sample = client.post("/predict", data={"sample": "0", "strategy": "bagging"})
    assert sample.status_code == 303
    labelled = client.get(sample.headers["Location"]).get_data(as_text=True)
    assert f"labelled\n      <strong>{CLASSES[int(labels[0])]}</strong>" in labelled

    url = f"/api/v1/predictions/{body['prediction_id']}/feedback"
    verdict = client.post(url, json={"label": "square"})
    assert verdict.status_code == 200, verdict.get_json()
    assert verdict.get_json() == {"correct": body["label"] == "square", "counted": True}
    refused = client.post(url, json={"label": "Ankle boot"})
    assert refused.status_code == 400 and "circle, square, triangle" in refused.get_json()["error"]
    stats = client.get("/api/v1/stats", headers=admin_headers).get_json()
    assert stats["total_predictions"] == 3
    assert stats["by_strategy"]["bagging"]["labelled"] == 1  # the verdict counts


def test_a_missing_or_corrupt_gallery_is_reported_and_the_page_falls_back(
    make_app: Callable[..., Flask], tiny_copy: Path
) -> None:
    """Fashion-MNIST falls back to its test split; other data gets no gallery, only uploads."""
    path = tiny_copy / "tiny"
    data = bytearray((path / GALLERY_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / GALLERY_FILE).write_bytes(bytes(data))
    artifact = load_artifact("tiny", tiny_copy)
    assert artifact.gallery is None and "checksum mismatch" in artifact.gallery_error
    home = make_app(BUNDLE=None, ARTIFACT_ROOT=tiny_copy, RUNTIME="torch").test_client().get("/")
    html = home.get_data(as_text=True)
    assert FASHION_MNIST_TEST in html and html.count('name="sample"') == 12

    (path / GALLERY_FILE).unlink()
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["data"]["dataset"] = "image-folder"
    (path / MANIFEST).write_text(json.dumps(manifest))
    assert "missing" in load_artifact("tiny", tiny_copy).gallery_error
    app = make_app(BUNDLE=None, ARTIFACT_ROOT=tiny_copy, RUNTIME="torch")
    html = app.test_client().get("/").get_data(as_text=True)
    assert 'name="sample"' not in html and "stores no sample" in html
    refused = app.test_client().post("/predict", data={"sample": "0", "strategy": "bagging"})
    assert refused.status_code == 400
