"""Model health from a recent window of traffic and feedback: calibration, agreement, drift.

``GET /api/v1/monitoring`` and ``/admin/monitoring`` read the newest ``window`` served
predictions (one indexed query; the cost does not grow with history) and report per ensemble:
the confusion matrix and per-class precision, recall and F1 from feedback, the expected
calibration error with its reliability bins, how often the members agree with the answer, the
fallback and dropped-member rates and latency. Drift compares the window with the reference
the artifact recorded on held-out images (``ensembles/reference.py``): two-sample KS tests
(``scipy.stats.ks_2samp``) on the input statistics and on each ensemble's served confidence,
and a chi-squared test of each ensemble's predicted-class mix, Bonferroni-corrected over all
the tests run. A detection is logged (WARNING, once per change), counted as a metric and shown
as an admin banner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

import store
from experiments.stats import percentile
from models.inputs import INPUT_STATISTICS, REFERENCE_DECIMALS, input_statistics
from serving.deferred import DeferredRunner
from store.db import Store

log = logging.getLogger(__name__)

#: ``MONITOR_WINDOW``'s default: the newest 300 served predictions (DESIGN.md).
DEFAULT_WINDOW = 300
MAX_WINDOW = 10_000
#: Fewer predictions in the window than this and drift is not judged: ``detected`` is null.
MIN_DRIFT_WINDOW = 100
#: Family-wise false-alarm rate of one drift check (Bonferroni over its tests).
DRIFT_ALPHA = 0.01
#: Fewer recent values than this and a test is not run (its p-value would mean little).
MIN_DRIFT_SAMPLES = 50
CALIBRATION_BINS = 10


def confusion(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``matrix[t, p]``: labelled answers of true class t that said p."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 per class from a confusion matrix (None where undefined)."""
    rows = []
    for k, name in enumerate(classes):
        tp = int(matrix[k, k])
        said, truly = int(matrix[:, k].sum()), int(matrix[k, :].sum())
        precision = tp / said if said else None
        recall = tp / truly if truly else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        rows.append(
            {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": truly}
        )
    return rows


def calibration(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and the bins themselves
    (the reliability diagram): ``sum_b n_b / n * |accuracy_b - confidence_b|``."""
    n = len(confidence)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        mean_conf = float(confidence[mask].mean()) if count else None
        accuracy = float(correct[mask].mean()) if count else None
        if count:
            ece += count / n * abs(accuracy - mean_conf)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
    return {"ece": ece if n else None, "bins": table}


def agreement(members: Sequence[Sequence[Mapping[str, Any]]], answers: np.ndarray) -> float | None:
    """Mean share of members that gave the ensemble's answer (None: no member outputs)."""
    shares = [
        sum(m.get("class_index") == int(answer) for m in ms) / len(ms)
        for ms, answer in zip(members, answers, strict=True)
        if ms
    ]
    return float(np.mean(shares)) if shares else None


def labelled_outcomes(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """What the rows with feedback say: accuracy, confusion, per-class scores, calibration."""
    labelled = [r for r in rows if r["true_class_index"] is not None]
    true = np.array([r["true_class_index"] for r in labelled], dtype=np.int64)
    said = np.array([r["class_index"] for r in labelled], dtype=np.int64)
    matrix = confusion(true, said, len(classes))
    correct = (true == said).astype(np.float64)
    confidence = np.array([r["confidence"] for r in labelled], dtype=np.float64)
    return {
        "labelled": len(labelled),
        "accuracy": float(correct.mean()) if labelled else None,
        "confusion": {"classes": list(classes), "matrix": matrix.tolist()},
        "per_class": per_class(matrix, classes),
        "calibration": calibration(confidence, correct),
    }


def ensemble_health(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """One ensemble's numbers over its rows of the window."""
    n = len(rows)
    answers = np.array([r["class_index"] for r in rows], dtype=np.int64)
    latencies = [float(r["latency_ms"]) for r in rows]
    return {
        "predictions": n,
        **labelled_outcomes(rows, classes),
        "agreement": agreement([r["members"] for r in rows], answers),
        "fallback_rate": sum(r["fallback"] is not None for r in rows) / n if n else None,
        "dropped_member_rate": sum(bool(r["degraded"]) for r in rows) / n if n else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
    }


def _ks(feature: str, recent: np.ndarray, reference: Sequence[float]) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of recent values against the reference sample."""
    n, n_reference = len(recent), len(reference)
    if n < MIN_DRIFT_SAMPLES or n_reference < MIN_DRIFT_SAMPLES:
        return _result(feature, "ks", n, n_reference)
    rounded = np.round(np.asarray(recent, dtype=np.float64), REFERENCE_DECIMALS)
    result = scipy_stats.ks_2samp(rounded, np.asarray(reference, dtype=np.float64))
    return _result(feature, "ks", n, n_reference, result.statistic, result.pvalue)


def _chi2(feature: str, recent: np.ndarray, reference_counts: Sequence[int]) -> dict[str, Any]:
    """Chi-squared test of the recent class mix against the reference's proportions (add-one
    smoothed, so a class the reference rarely predicted is not an infinite surprise)."""
    counts = np.asarray(reference_counts, dtype=np.float64)
    n, n_reference = len(recent), int(counts.sum())
    if n < MIN_DRIFT_SAMPLES or n_reference < MIN_DRIFT_SAMPLES:
        return _result(feature, "chi2", n, n_reference)
    observed = np.bincount(recent, minlength=len(counts)).astype(np.float64)
    share = (counts + 1) / (counts.sum() + len(counts))
    result = scipy_stats.chisquare(observed, share * observed.sum())
    return _result(feature, "chi2", n, n_reference, result.statistic, result.pvalue)


def _result(
    feature: str,
    test: str,
    n: int,
    reference_n: int,
    statistic: float | None = None,
    p_value: float | None = None,
) -> dict[str, Any]:
    """One drift test as reported (statistic and p-value None: too few values to run it)."""
    return {
        "feature": feature,
        "test": test,
        "statistic": None if statistic is None else float(statistic),
        "p_value": None if p_value is None else float(p_value),
        "detected": False,
        "n": int(n),
        "reference_n": int(reference_n),
    }


def drift(
    rows: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Any] | None,
    alpha: float = DRIFT_ALPHA,
) -> dict[str, Any]:
    """The drift tests of a window against the artifact's reference, Bonferroni-corrected;
    ``detected`` is null until the window holds ``MIN_DRIFT_WINDOW`` predictions."""
    judged = len(rows) >= MIN_DRIFT_WINDOW
    if not reference:
        return {
            "detected": False if judged else None,
            "alpha": alpha,
            "reference": None,
            "tests": [],
            "min_predictions": MIN_DRIFT_WINDOW,
        }
    tests = []
    canvases = [r["canvas"] for r in rows if r.get("canvas") is not None]
    if canvases:
        images = np.stack([np.frombuffer(c, dtype=np.uint8).reshape(28, 28) for c in canvases])
        recent = input_statistics(images)
    else:
        recent = {key: np.zeros(0) for key in INPUT_STATISTICS}
    for key in INPUT_STATISTICS:
        tests.append(_ks(key, recent[key], reference["inputs"].get(key, [])))
    by_arm: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm, expected in (reference.get("ensembles") or {}).items():
        served = by_arm.get(arm, [])
        if not served:
            continue
        confidence = np.array([r["confidence"] for r in served], dtype=np.float64)
        classes = np.array([r["class_index"] for r in served], dtype=np.int64)
        tests.append(_ks(f"confidence[{arm}]", confidence, expected["confidence"]))
        tests.append(_chi2(f"predicted_class[{arm}]", classes, expected["class_counts"]))
    run = [t for t in tests if t["p_value"] is not None]
    threshold = alpha / len(run) if run else alpha
    for t in tests:
        if not judged:
            t["detected"] = None  # its p-value is shown, but too few predictions for a verdict
        elif t["p_value"] is not None:
            t["detected"] = t["p_value"] < threshold
    return {
        "detected": any(t["detected"] for t in run) if judged else None,
        "min_predictions": MIN_DRIFT_WINDOW,
        "alpha": alpha,
        "threshold": threshold,
        "reference": {
            "version": reference.get("version"),
            "images": reference.get("images"),
            "source": reference.get("source"),
        },
        "tests": tests,
    }


def _overall(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """The whole window's calibration and confusion, every serving model together."""
    outcomes = labelled_outcomes(rows, classes)
    return {key: outcomes[key] for key in ("calibration", "confusion")}


def report(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    reference: Mapping[str, Any] | None,
    window: int,
) -> dict[str, Any]:
    """The monitoring body: the window, per-ensemble health, drift."""
    by_arm: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    times = [r["created_at"] for r in rows]
    return {
        "window": {
            "size": window,
            "predictions": len(rows),
            "from": min(times).isoformat(timespec="seconds") if times else None,
            "to": max(times).isoformat(timespec="seconds") if times else None,
        },
        **_overall(rows, classes),
        "ensembles": {arm: ensemble_health(r, classes) for arm, r in sorted(by_arm.items())},
        "drift": drift(rows, reference),
    }


class Monitor:
    """Computes the monitoring report, and checks drift in the background now and then."""

    def __init__(
        self,
        db: Store,
        bundle: Callable[[], Any],
        *,
        interval: float = 30.0,
        window: int = DEFAULT_WINDOW,
        deferred: DeferredRunner | None = None,
        on_drift: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.bundle = bundle
        self.interval = interval
        self.window = window
        self.deferred = deferred or DeferredRunner(inline=True)
        self.on_drift = on_drift
        self.clock = clock
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._detected = False
        #: The newest background drift check (None until one ran).
        self.latest: dict[str, Any] | None = None

    def report(self, window: int | None = None) -> dict[str, Any]:
        """``GET /api/v1/monitoring``: the newest ``window`` served predictions."""
        size = self.window if window is None else window
        bundle = self.bundle()
        classes = tuple(bundle.classes) if bundle is not None else ()
        reference = (bundle.manifest or {}).get("reference") if bundle is not None else None
        session = self.db.sessions()
        try:
            rows = store.recent_window(session, size)
        finally:
            session.rollback()
        return report(rows, classes, reference, size)

    def observe(self, _name: str | None = None) -> None:
        """An outcome arrived: check drift soon, at most once per interval per worker."""
        now = self.clock()
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        self.deferred.submit(self.check)

    def check(self) -> dict[str, Any] | None:
        """Run the drift tests on the current window; log when detection starts or ends."""
        try:
            body = self.report()
        except Exception:
            log.exception("monitoring: the drift check failed")
            return None
        found = body["drift"]
        self.latest = found
        if found["detected"] and not self._detected:
            failing = [t["feature"] for t in found["tests"] if t["detected"]]
            log.warning(
                "drift detected over the newest %d predictions: %s (Bonferroni alpha %.3g)",
                body["window"]["predictions"],
                ", ".join(failing),
                found["alpha"],
            )
        elif self._detected and found["detected"] is False:
            log.info("drift no longer detected over the newest %d predictions", self.window)
        if found["detected"] is not None:  # null: too few predictions, no verdict either way
            self._detected = found["detected"]
        if self.on_drift is not None:
            self.on_drift(found)
        return found


def parse_window(value: str | None, default: int = DEFAULT_WINDOW) -> int:
    """The ``window`` query parameter: a whole number of predictions, 1..MAX_WINDOW."""
    if value is None or value == "":
        return default
    try:
        window = int(value)
    except ValueError:
        raise ValueError(
            f"window must be a whole number of predictions, got {value[:20]!r}"
        ) from None
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be between 1 and {MAX_WINDOW}, got {window}")
    return window
