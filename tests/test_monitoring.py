"""Monitoring: per-ensemble health from a recent window, and drift against the artifact's
reference — the formulas against scikit-learn and scipy, the endpoint's contract, and drift
both ways on the shipped models (clean test images pass; rotated or blurred ones are flagged)."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import stats as scipy_stats
from sklearn.metrics import precision_recall_fscore_support

from app import ConfigError
from serving import monitoring
from serving.monitoring import (
    Monitor,
    calibration,
    confusion,
    drift,
    parse_window,
    per_class,
)

CLASSES = tuple(f"c{k}" for k in range(10))


def test_per_class_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(0, 10, 500)
    said = np.where(rng.random(500) < 0.7, true, rng.integers(0, 10, 500))
    said[said == 9] = 8  # class 9 is never said: its precision is undefined
    rows = per_class(confusion(true, said, 10), CLASSES)
    precision, recall, f1, support = precision_recall_fscore_support(
        true, said, labels=range(10), zero_division=np.nan
    )
    for k, row in enumerate(rows):
        assert row["support"] == support[k]
        assert row["recall"] == pytest.approx(recall[k])
        if np.isnan(precision[k]):
            assert row["precision"] is None and row["f1"] is None
        else:
            assert row["precision"] == pytest.approx(precision[k])
            assert row["f1"] == pytest.approx(f1[k])


def test_expected_calibration_error_by_hand() -> None:
    confidence = np.array([0.05, 0.15, 0.95, 0.95, 0.55, 1.0])
    correct = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    result = calibration(confidence, correct, bins=10)
    # bins: [0, .1]: 0.05 (wrong); (.1, .2]: 0.15 (right); (.5, .6]: 0.55 (right);
    # (.9, 1]: 0.95, 0.95, 1.0 (right, wrong, right)
    expected = (
        1 / 6 * abs(0 - 0.05)
        + 1 / 6 * abs(1 - 0.15)
        + 1 / 6 * abs(1 - 0.55)
        + 3 / 6 * abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3)
    )
    assert result["ece"] == pytest.approx(expected)
    assert [b["count"] for b in result["bins"]] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    assert calibration(np.zeros(0), np.zeros(0))["ece"] is None


def _rows(n: int, rng: np.random.Generator, *, shift: float = 0.0) -> list[dict[str, Any]]:
    """Window rows of one arm whose canvases' intensity is shifted by ``shift`` (0..1)."""
    rows = []
    for _ in range(n):
        canvas = np.clip(rng.normal(0.3 + shift, 0.1, (28, 28)) * 255, 0, 255).astype(np.uint8)
        rows.append(
            {
                "arm": "bagging",
                "class_index": int(rng.integers(0, 10)),
                "confidence": float(rng.uniform(0.8, 1.0)),
                "canvas": canvas.tobytes(),
            }
        )
    return rows


def _reference_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    canvases = np.stack([np.frombuffer(r["canvas"], np.uint8).reshape(28, 28) for r in rows])
    inputs = monitoring.input_statistics(canvases)
    return {
        "version": "v",
        "images": len(rows),
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        "ensembles": {
            "bagging": {
                "confidence": [r["confidence"] for r in rows],
                "class_counts": np.bincount(
                    [r["class_index"] for r in rows], minlength=10
                ).tolist(),
            }
        },
    }


def test_drift_tests_are_scipys_with_a_bonferroni_correction() -> None:
    rng = np.random.default_rng(0)
    reference = _reference_of(_rows(400, rng))
    recent = _rows(200, rng, shift=0.05)
    found = drift(recent, reference, alpha=0.01)
    by_feature = {t["feature"]: t for t in found["tests"]}
    assert set(by_feature) == {
        "intensity",
        "ink",
        "confidence[bagging]",
        "predicted_class[bagging]",
    }
    assert found["threshold"] == pytest.approx(0.01 / 4)
    intensity = [np.frombuffer(r["canvas"], np.uint8).mean() / 255 for r in recent]
    expected = scipy_stats.ks_2samp(np.round(intensity, 4), reference["inputs"]["intensity"])
    assert by_feature["intensity"]["statistic"] == pytest.approx(expected.statistic)
    assert by_feature["intensity"]["p_value"] == pytest.approx(expected.pvalue)
    counts = np.asarray(reference["ensembles"]["bagging"]["class_counts"], float)
    observed = np.bincount([r["class_index"] for r in recent], minlength=10)
    share = (counts + 1) / (counts.sum() + 10)
    chi2 = scipy_stats.chisquare(observed, share * observed.sum())
    assert by_feature["predicted_class[bagging]"]["p_value"] == pytest.approx(chi2.pvalue)
    assert by_feature["intensity"]["detected"] and found["detected"]
    assert not by_feature["confidence[bagging]"]["detected"]  # same distribution
    for t in found["tests"]:
        assert t["detected"] == (t["p_value"] < found["threshold"])


def test_too_few_values_run_no_test_and_no_reference_detects_nothing() -> None:
    rng = np.random.default_rng(1)
    reference = _reference_of(_rows(400, rng))
    found = drift(_rows(10, rng, shift=0.5), reference)
    assert all(t["p_value"] is None and not t["detected"] for t in found["tests"])
    assert found["detected"] is None  # DESIGN: null until the window holds 100 predictions
    unjudged = drift(_rows(80, rng, shift=0.5), reference)  # tests run from 50 values
    assert unjudged["detected"] is None
    assert any(t["p_value"] is not None for t in unjudged["tests"])
    assert all(t["detected"] is None for t in unjudged["tests"])  # no verdict on any of them
    assert drift(_rows(100, rng), reference)["detected"] is False
    assert drift(_rows(100, rng), None) == {
        "detected": False,
        "alpha": monitoring.DRIFT_ALPHA,
        "reference": None,
        "tests": [],
        "min_predictions": 100,
    }
    assert drift(_rows(99, rng), None)["detected"] is None


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", "10001"])
def test_a_bad_window_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(value)


def test_the_endpoint_needs_an_admin_and_a_sensible_window(client, admin_headers) -> None:
    assert client.get("/api/v1/monitoring").status_code in (401, 403)
    bad = client.get("/api/v1/monitoring?window=lots", headers=admin_headers)
    assert bad.status_code == 400 and "window" in bad.get_json()["error"]
    page = client.get("/admin/monitoring?window=-1", headers=admin_headers)
    assert page.status_code == 400 and b"window must be between" in page.data


def test_the_window_reports_each_ensembles_health(client, admin_headers, image_png: bytes) -> None:
    ids = []
    for strategy in ("bagging", "bagging", "boosting"):
        data = {"image": (io.BytesIO(image_png), "x.png"), "strategy": strategy}
        body = client.post("/api/v1/predict", data=data).get_json()
        ids.append(body)
    right = ids[0]
    client.post(
        f"/api/v1/predictions/{right['prediction_id']}/feedback", json={"label": right["label"]}
    )
    body = client.get("/api/v1/monitoring?window=50", headers=admin_headers).get_json()
    assert body["window"]["size"] == 50 and body["window"]["predictions"] == 3
    bagging = body["ensembles"]["bagging"]
    assert bagging["predictions"] == 2 and bagging["labelled"] == 1
    assert bagging["accuracy"] == 1.0
    assert sum(map(sum, bagging["confusion"]["matrix"])) == 1
    assert bagging["fallback_rate"] == 0.0 and 0.0 <= bagging["agreement"] <= 1.0
    assert set(body["drift"]) >= {"detected", "tests"}
    # DESIGN's contract: top-level calibration and confusion over the window, and detected
    # null while the window holds fewer than 100 predictions.
    assert body["drift"]["detected"] is None
    assert sum(map(sum, body["confusion"]["matrix"])) == 1
    assert body["calibration"]["bins"] and "ece" in body["calibration"]
    default = client.get("/api/v1/monitoring", headers=admin_headers).get_json()
    assert default["window"]["size"] == 300  # MONITOR_WINDOW's default
    page = client.get("/admin/monitoring", headers=admin_headers)
    assert page.status_code == 200 and b"Reliability" in page.data
    assert b"Too few predictions to judge drift" in page.data


def test_monitor_window_sets_the_default_window(make_app, admin_headers, monkeypatch) -> None:
    monkeypatch.setenv("MONITOR_WINDOW", "120")
    body = make_app().test_client().get("/api/v1/monitoring", headers=admin_headers).get_json()
    assert body["window"]["size"] == 120
    for refused in ("0", "99"):  # below 100 drift is never judged: the alarm could not sound
        monkeypatch.setenv("MONITOR_WINDOW", refused)
        with pytest.raises(ConfigError, match="MONITOR_WINDOW"):
            make_app()


# --- drift both ways on the shipped models -------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from ensembles.bundle import load_bundle

    bundle = load_bundle()
    if not (bundle.manifest or {}).get("reference"):
        pytest.fail(
            "the shipped artifact has no drift reference: run python -m ensembles.reference"
        )
    return bundle


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    from models.data import load_fashion_mnist

    return load_fashion_mnist().test_images[:300]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _window_after(app, uploads: list[bytes]) -> dict[str, Any]:
    client = app.test_client()
    for data in uploads:
        form = {"image": (io.BytesIO(data), "x.png"), "strategy": "bagging"}
        response = client.post("/api/v1/predict", data=form)
        assert response.status_code == 200, response.get_json()
    with app.app_context():
        from views.context import services

        return services().monitor.report(len(uploads))


def test_clean_test_images_are_not_flagged_but_rotated_and_blurred_ones_are(
    make_app, shipped, test_images, caplog, admin_headers
) -> None:
    app = make_app(BUNDLE=shipped)
    clean = [_png(Image.fromarray(image)) for image in test_images]
    body = _window_after(app, clean)
    assert body["drift"]["reference"]["version"] == shipped.version
    assert not body["drift"]["detected"], body["drift"]["tests"]
    assert all(t["p_value"] is not None for t in body["drift"]["tests"])

    rotated = [_png(Image.fromarray(image).rotate(90)) for image in test_images]
    body = _window_after(app, rotated)
    assert body["drift"]["detected"], body["drift"]["tests"]

    blurred = [
        _png(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5))) for image in test_images
    ]
    body = _window_after(app, blurred)
    assert body["drift"]["detected"], body["drift"]["tests"]
    flagged = {t["feature"] for t in body["drift"]["tests"] if t["detected"]}
    assert flagged & {"ink", "intensity"}, flagged  # blur spreads and thins the ink

    with app.app_context():
        from views.context import services

        found: list[dict[str, Any]] = []
        monitor: Monitor = services().monitor
        monitor.on_drift = found.append
        monitor.window = len(test_images)
        caplog.set_level(logging.WARNING, logger="serving.monitoring")
        assert monitor.check()["detected"]
        monitor.check()
    warnings = [r for r in caplog.records if "drift detected" in r.getMessage()]
    assert len(warnings) == 1, "the alert is logged once while drift lasts"
    assert len(found) == 2 and found[0]["detected"]
    overview = app.test_client().get("/admin", headers=admin_headers)
    assert b"Drift detected in recent traffic" in overview.data
