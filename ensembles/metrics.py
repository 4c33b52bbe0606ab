"""Accuracy, negative log-likelihood and expected calibration error of predicted distributions."""

from __future__ import annotations

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
