"""Simple statistics of the model's 28x28 inputs, the same at training time and in serving.

Drift monitoring compares them between a reference drawn from held-out images at training
time and a recent window of requests: an upload path that starts producing darker, thinner or
blurrier canvases shows here before any label arrives.
"""

from __future__ import annotations

import numpy as np

#: A pixel counts as ink above this level (of 255): the item, not its soft edge.
INK_LEVEL = 127
#: Decimals a reference keeps per value; recent values are rounded alike before a test, so
#: values the rounding made equal (confidences of 0.99996 and 1.0) compare as equal.
REFERENCE_DECIMALS = 4
#: The statistics, in the order reports list them.
INPUT_STATISTICS = ("intensity", "ink")


def input_statistics(canvases: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: mean intensity (0..1) and the share of pixels that are ink, for ``(N, 28, 28)``
    uint8 canvases (light item on black, as the models see them)."""
    pixels = np.asarray(canvases, dtype=np.float32).reshape(len(canvases), -1)
    return {
        "intensity": pixels.mean(axis=1) / 255.0,
        "ink": (pixels > INK_LEVEL).mean(axis=1),
    }
