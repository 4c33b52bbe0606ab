"""Accuracy, negative log-likelihood and expected calibration error of predicted distributions,
and the paired test that says whether two strategies really differ on the same images."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(np.mean(probs.argmax(axis=-1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-probability of the true class (nats)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| per confidence bin, weighted by size."""
    confidence = probs.max(axis=-1)
    correct = probs.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def summary(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The three numbers the manifest and `make evaluate` report."""
    return {
        "accuracy": round(accuracy(probs, labels), 6),
        "nll": round(nll(probs, labels), 6),
        "ece": round(ece(probs, labels), 6),
    }


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test of two classifiers scored on the same images.

    Only the images where exactly one is right carry information; under "equally accurate" each
    of those is a fair coin, so the two-sided p-value is a binomial tail (computed exactly).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    tail = Fraction(sum(comb(n, i) for i in range(min(a_only, b_only) + 1)), 2**n)
    return {"a_only": a_only, "b_only": b_only, "p_value": float(min(1, 2 * tail))}
