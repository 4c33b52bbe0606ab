"""Ways to combine member class probabilities ``(K, N, C)`` into one ``(N, C)`` distribution.

Pure numpy so they can be checked by hand and used from a notebook.
"""

from __future__ import annotations

import numpy as np


def _weights(weights: np.ndarray | None, k: int) -> np.ndarray:
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"need {k} finite non-negative weights with a positive sum, got {w}")
    return w / w.sum()


def average(probs: np.ndarray) -> np.ndarray:
    """Soft vote: the mean of the members' distributions."""
    return probs.mean(axis=0)


def weighted_average(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Soft vote with member weights (normalised to sum to one)."""
    return np.tensordot(_weights(weights, probs.shape[0]), probs, axes=1)


def vote(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Hard (optionally weighted) majority vote, returned as the share of weight per class.

    Ties go to the lowest class index, as ``argmax`` does.
    """
    k, n, c = probs.shape
    w = _weights(weights, k)
    picks = probs.argmax(axis=-1)  # (K, N)
    out = np.zeros((n, c))
    for member in range(k):
        out[np.arange(n), picks[member]] += w[member]
    return out


def max_confidence(probs: np.ndarray) -> np.ndarray:
    """Per image, the distribution of the member that is most sure of itself."""
    best = probs.max(axis=-1).argmax(axis=0)  # (N,)
    return probs[best, np.arange(probs.shape[1])]


AGGREGATORS = {
    "average": lambda probs, weights: average(probs),
    "weighted_average": weighted_average,
    "vote": vote,
    "max_confidence": lambda probs, weights: max_confidence(probs),
}
