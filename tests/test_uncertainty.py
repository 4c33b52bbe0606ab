"""Abstention: the uncertainty features against hand computations, the fitted file verified at
load (corruption injected), and the real artifact abstaining on a gradient upload but not on
Fashion-MNIST test images, through ``/api/v1/predict``, the result page and ``/admin``."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ensembles.abstention import gradient_images, png
from ensembles.base import Result
from ensembles.bundle import load_bundle
from ensembles.uncertainty import (
    FEATURES,
    NOT_ASSESSED,
    Abstainer,
    AbstainerError,
    assess_one,
    input_facts,
    model_features,
)
from models.data import load_fashion_mnist
from models.preprocess import PreprocessError, analyse
from models.registry import ABSTENTION_FILE, MANIFEST, load_artifact, sha256_file

CLASSES = tuple("abcd")


def result(members: list[list[float]], combined: list[float], used: int | None = None) -> Result:
    """A one-image result from member rows and the combined row."""
    probs = np.array(members, dtype=np.float64)[:, None, :]
    return Result(
        strategy="test",
        classes=CLASSES,
        probabilities=np.array([combined], dtype=np.float64),
        member_names=[f"m{i}" for i in range(len(members))],
        member_probabilities=probs,
        weights=np.ones(len(members)),
        members_used=None if used is None else np.array([used]),
    )


def entropy(p) -> float:
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_agreeing_members_have_no_mutual_information_and_no_variance():
    row = [0.7, 0.1, 0.1, 0.1]
    logit, h, mi, var = model_features(result([row, row, row], row))[0]
    assert mi == pytest.approx(0.0, abs=1e-9) and var == pytest.approx(0.0, abs=1e-12)
    assert logit == pytest.approx(np.log(0.7 / 0.3))
    assert h == pytest.approx(entropy(row), abs=1e-6)


def test_disagreement_matches_a_hand_computation():
    a, b = [0.9, 0.1, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0]
    mean = [0.5, 0.5, 0.0, 0.0]
    _, _, mi, var = model_features(result([a, b], mean))[0]
    # I = H(mean) - mean H(member); both members have H(0.9, 0.1).
    assert mi == pytest.approx(np.log(2) - entropy([0.9, 0.1]), abs=1e-5)
    assert var == pytest.approx(0.16, abs=1e-6)  # members' p(class 0) 0.9 and 0.1 around 0.5


def test_a_cascade_counts_only_the_members_that_ran():
    """Rows past ``members_used`` hold the cascade's own answer: they must not count."""
    first, late = [0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]
    ran_one = model_features(result([first, late], first, used=1))[0]
    assert ran_one[2] == pytest.approx(0.0, abs=1e-9) and ran_one[3] == pytest.approx(0.0)
    ran_both = model_features(result([first, late], first, used=2))[0]
    assert ran_both[2] > 0.3


def test_input_facts_read_the_canvas_and_the_features():
    canvas = np.zeros((28, 28), np.uint8)
    canvas[7:21, 7:21] = 128  # a quarter of the frame, touching no edge
    facts = input_facts({"background": "light", "brightness": 0.8, "mode": "L"}, canvas, b"")
    assert facts["light_background"] == 1.0 and facts["brightness"] == 0.8
    assert facts["fill"] == pytest.approx(196 / 784) and facts["frame"] == 0.0
    assert facts["ink"] == pytest.approx(128 / 255) and facts["saturation"] == 0.0
    red = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(red, "PNG")
    facts = input_facts({"mode": "RGB"}, canvas, red.getvalue())
    assert facts["saturation"] == pytest.approx(1.0) and facts["light_background"] == 0.0


def numbers(**changes):
    raw = Abstainer(
        np.zeros(len(FEATURES)), np.ones(len(FEATURES)), np.zeros(len(FEATURES)), 0.0, 0.5
    ).to_dict()
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "changes",
    [
        {"format": 2},
        {"features": list(reversed(FEATURES))},
        {"coef": [0.0] * (len(FEATURES) - 1)},
        {"mean": ["x"] * len(FEATURES)},
        {"scale": [0.0] * len(FEATURES)},
        {"coef": [float("nan")] * len(FEATURES)},
        {"threshold": 1.0},
        {"threshold": True},
        {"intercept": None},
    ],
)
def test_malformed_numbers_are_refused(changes):
    with pytest.raises(AbstainerError):
        Abstainer.from_dict(numbers(**changes))


def test_the_numbers_round_trip_and_score_as_a_logistic():
    raw = numbers(coef=[1.0] + [0.0] * (len(FEATURES) - 1), intercept=-1.0)
    abstainer = Abstainer.from_dict(json.loads(json.dumps(raw)))
    assert abstainer.to_dict() == raw
    x = np.zeros((2, len(FEATURES)))
    x[1, 0] = 1.0
    assert abstainer.scores(x) == pytest.approx([1 / (1 + np.e), 0.5])


def test_a_scoring_fault_answers_without_abstention(caplog):
    """A combiner whose numbers do not fit the features (injected) must not fail a prediction."""
    broken = Abstainer(np.zeros(3), np.ones(3), np.zeros(3), 0.0, 0.5)
    r = result([[0.7, 0.1, 0.1, 0.1]], [0.7, 0.1, 0.1, 0.1])
    with caplog.at_level(logging.ERROR, logger="ensembles.uncertainty"):
        assert assess_one(broken, r, {}, np.zeros((28, 28)), None) == NOT_ASSESSED
    assert "uncertainty not scored" in caplog.text
    assert assess_one(None, r, {}, np.zeros((28, 28)), None) == NOT_ASSESSED


# -- the shipped artifact's file, verified at load -------------------------------------------
@pytest.fixture
def artifact_copy(shipped_bundle, tmp_path) -> Path:
    """A copy of the shipped artifact (same files, same manifest) to break."""
    source = load_artifact(shipped_bundle.version).path
    target = tmp_path / shipped_bundle.version
    shutil.copytree(source, target)
    return target


def test_the_shipped_artifact_lists_and_serves_its_abstention(shipped_bundle):
    path = load_artifact(shipped_bundle.version).path
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["files"][ABSTENTION_FILE] == sha256_file(path / ABSTENTION_FILE)
    record = manifest["abstention"]
    assert record["command"].startswith("python -m ensembles.abstention")
    assert record["data"]["test_split_used"] is False
    assert shipped_bundle.abstainer is not None
    assert shipped_bundle.abstainer.threshold == record["threshold"]


@pytest.mark.parametrize("fault", ["corrupt", "missing", "malformed"])
def test_a_broken_abstention_file_means_no_abstention_and_a_log_line(artifact_copy, fault, caplog):
    file = artifact_copy / ABSTENTION_FILE
    if fault == "corrupt":
        file.write_bytes(file.read_bytes() + b" ")
    elif fault == "missing":
        file.unlink()
    else:  # intact checksum, but numbers the combiner refuses
        raw = json.loads(file.read_text())
        raw["scale"] = [0.0] * len(FEATURES)
        file.write_text(json.dumps(raw))
        manifest = json.loads((artifact_copy / MANIFEST).read_text())
        manifest["files"][ABSTENTION_FILE] = sha256_file(file)
        (artifact_copy / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        bundle = load_bundle(artifact_copy.name, root=artifact_copy.parent)
    assert bundle.abstainer is None
    expected = {
        "corrupt": "checksum mismatch",
        "missing": "abstention file missing",
        "malformed": "scale must be positive",
    }[fault]
    assert expected in caplog.text and "will not abstain" in caplog.text
    x = torch.zeros((1, 1, 28, 28))
    assert bundle.predict("bagging", x).probabilities.shape == (1, 10)


# -- the real artifact through the API ------------------------------------------------------
@pytest.fixture
def shipped_client(make_app, shipped_bundle):
    return make_app(BUNDLE=shipped_bundle).test_client()


def api_predict(client, data: bytes, strategy: str = "stacking") -> dict:
    response = client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(data), "x.png"), "strategy": strategy}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def accepted(data: bytes) -> bool:
    try:
        analyse(data)
    except PreprocessError:
        return False
    return True


def test_gradients_abstain_and_fashion_mnist_does_not(shipped_client, admin_headers):
    # A seed neither the fit nor the bench uses; edge-less gradients are refused as blank (422).
    gradients = [g for g in gradient_images("test", 40, seed=9090) if accepted(g)][:6]
    assert len(gradients) == 6
    answers = [api_predict(shipped_client, g) for g in gradients]
    assert all(a["label"] and isinstance(a["uncertainty"], float) for a in answers)
    assert sum(a["abstained"] for a in answers) >= 5, [a["uncertainty"] for a in answers]

    data = load_fashion_mnist()
    rows = np.random.default_rng(5).choice(len(data.test_images), 50, replace=False)
    test = [api_predict(shipped_client, png(data.test_images[i])) for i in rows]
    kept = sum(not a["abstained"] for a in test)
    assert kept >= 45, f"{50 - kept} of 50 Fashion-MNIST test images abstained"

    abstained = next(a for a in answers if a["abstained"])
    page = shipped_client.get(f"/predictions/{abstained['prediction_id']}").get_data(as_text=True)
    assert "Not sure: this may not be a clothing item" in page and abstained["label"] in page
    calm = next(a for a in test if not a["abstained"])
    page = shipped_client.get(f"/predictions/{calm['prediction_id']}").get_data(as_text=True)
    assert "Not sure" not in page

    admin = shipped_client.get("/admin", headers=admin_headers).get_data(as_text=True)
    counts = re.search(
        r'data-strategy="stacking">.*?class="num answered">(\d+)<.*?class="num abstained">(\d+)<',
        admin.split('id="abstentions"', 1)[1],
        re.S,
    )
    assert counts is not None
    assert int(counts[1]) == len(answers) + len(test)
    assert int(counts[2]) == sum(a["abstained"] for a in answers + test)


def test_training_refuses_to_fit_abstention_on_a_folder(capsys):
    """The combiner is fitted on Fashion-MNIST's blend split: a folder dataset is refused."""
    from ensembles.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--abstention", "--data", "some/folder"])
    assert "--abstention" in capsys.readouterr().err
    assert parse_args(["--abstention"]).abstention is True
