"""How unsure an answer is, and whether to abstain: one pure function for serving and benches.

Members can agree with high confidence on an image that is not a clothing item at all (a colour
gradient: all nine say "Bag" at ~100%), so disagreement alone cannot flag it. The score
combines three kinds of evidence into one number in [0, 1]:

- the members: mutual information (epistemic disagreement) and the variance of the members'
  probability of the answered class, over the members that answered this image;
- the combination: the served probabilities' confidence (as a logit) and entropy;
- the input, as ``models.preprocess.analyse`` saw it: whether the background was light, the
  upload's brightness and colour saturation, how much of the 28x28 frame the item fills,
  how much of the frame's edge it touches, and how bright its pixels are.

A logistic regression over these standardised features (a few plain numbers, fitted by
``python -m ensembles.abstention`` on held-out data only and kept as JSON in the artifact) gives
the score; the answer abstains when the score reaches the fitted threshold. Nothing here imports
Flask, touches a database or unpickles anything.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ensembles.base import Result

log = logging.getLogger(__name__)

#: Feature order of the fitted combiner (the JSON file names them; a mismatch refuses it).
FEATURES: tuple[str, ...] = (
    "confidence_logit",
    "entropy",
    "mutual_information",
    "member_variance",
    "light_background",
    "brightness",
    "saturation",
    "fill",
    "frame",
    "ink",
)
#: Input facts read from the upload and its canvas (the last six features).
INPUT_FACTS: tuple[str, ...] = FEATURES[4:]
FORMAT = 1
#: Side the upload is reduced to before measuring colour saturation (a cheap, draft decode).
_SATURATION_SIDE = 64
#: Probabilities are clipped to [EPS, 1 - EPS] before logs and logits.
_EPS = 1e-6
#: PIL modes without colour: saturation 0 without decoding again.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class AbstainerError(ValueError):
    """The fitted combiner's numbers are malformed; serving then answers without abstaining."""


def colour_saturation(data: bytes, mode: str | None) -> float:
    """Mean HSV saturation (0-1) of the upload, measured on a small draft decode.

    Called only after ``analyse`` accepted the bytes; an unreadable file counts as grey."""
    if mode in _GREY_MODES:
        return 0.0
    try:
        image = Image.open(io.BytesIO(data))
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (_SATURATION_SIDE, _SATURATION_SIDE))
        image = image.convert("RGB")
        image.thumbnail((_SATURATION_SIDE, _SATURATION_SIDE), Image.Resampling.BOX)
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
    except Exception as exc:  # analyse already decoded these bytes; be defensive anyway
        log.info("saturation not measured (%s); counting the image as grey", exc)
        return 0.0
    return round(float(hsv[..., 1].mean()) / 255.0, 4)


def input_facts(
    features: Mapping[str, Any], canvas: np.ndarray, data: bytes | None = None
) -> dict[str, float]:
    """The input-side evidence of one upload: preprocessing's features plus its 28x28 canvas."""
    canvas = np.asarray(canvas, dtype=np.float32)
    on = canvas > 0
    ring = np.concatenate([canvas[0], canvas[-1], canvas[1:-1, 0], canvas[1:-1, -1]])
    saturation = features.get("saturation")
    if saturation is None:
        saturation = colour_saturation(data, features.get("mode")) if data is not None else 0.0
    return {
        "light_background": 1.0 if features.get("background") == "light" else 0.0,
        "brightness": float(features.get("brightness") or 0.0),
        "saturation": float(saturation),
        "fill": float(on.mean()),
        "frame": float((ring > 0).mean()),
        "ink": float(canvas[on].mean() / 255.0) if on.any() else 0.0,
    }


def member_mask(result: Result) -> np.ndarray:
    """``(K, N)`` True where member k really answered image n (a cascade runs fewer)."""
    probs = result.member_probabilities
    mask = np.isfinite(probs).all(axis=2)
    if result.members_used is not None:
        used = np.asarray(result.members_used)
        mask &= np.arange(probs.shape[0])[:, None] < used[None, :]
    return mask


def model_features(result: Result) -> np.ndarray:
    """``(N, 4)``: confidence logit, entropy, mutual information and member variance."""
    combined = np.clip(np.asarray(result.probabilities, dtype=np.float64), _EPS, 1.0)
    n = combined.shape[0]
    top = combined.argmax(axis=1)
    confidence = np.clip(combined[np.arange(n), top], _EPS, 1.0 - _EPS)
    entropy = -(combined * np.log(combined)).sum(axis=1)
    probs = np.asarray(result.member_probabilities, dtype=np.float64)
    mi = np.zeros(n)
    variance = np.zeros(n)
    if probs.size:
        mask = member_mask(result)
        weight = mask.astype(np.float64)
        count = np.maximum(weight.sum(axis=0), 1.0)  # (N,)
        safe = np.where(mask[..., None], np.clip(probs, _EPS, 1.0), 1.0)
        mean = (safe * weight[..., None]).sum(axis=0) / count[:, None]
        member_h = -(safe * np.log(safe)).sum(axis=2)  # (K, N); 0 where masked out
        mi = -(mean * np.log(np.clip(mean, _EPS, 1.0))).sum(axis=1)
        mi = np.maximum(mi - (member_h * weight).sum(axis=0) / count, 0.0)
        at_top = safe[:, np.arange(n), top]  # (K, N)
        centre = (at_top * weight).sum(axis=0) / count
        variance = (((at_top - centre) ** 2) * weight).sum(axis=0) / count
    logit = np.log(confidence) - np.log1p(-confidence)
    return np.column_stack([logit, entropy, mi, variance])


def feature_matrix(result: Result, facts: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``(N, len(FEATURES))`` for a batch: the result's rows and each image's input facts."""
    model = model_features(result)
    if len(facts) != model.shape[0]:
        raise ValueError(f"{len(facts)} input facts for {model.shape[0]} images")
    inputs = np.array([[float(f[name]) for name in INPUT_FACTS] for f in facts], dtype=np.float64)
    return np.column_stack([model, inputs.reshape(len(facts), len(INPUT_FACTS))])


def _numbers(raw: Mapping[str, Any], key: str, size: int) -> np.ndarray:
    values = raw.get(key)
    if not isinstance(values, list) or len(values) != size:
        raise AbstainerError(f"abstention: {key} must be a list of {size} numbers")
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise AbstainerError(f"abstention: {key} holds a non-number") from None
    if not np.all(np.isfinite(array)):
        raise AbstainerError(f"abstention: {key} holds a non-finite number")
    return array


@dataclass(frozen=True)
class Abstainer:
    """A fitted logistic combiner over ``FEATURES`` and the score at which answers abstain."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Abstainer:
        """Parse the artifact's JSON numbers, refusing anything malformed (no partial use)."""
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
            raise AbstainerError(f"abstention: expected a JSON object with format {FORMAT}")
        if raw.get("features") != list(FEATURES):
            raise AbstainerError(f"abstention: features must be {list(FEATURES)}")
        k = len(FEATURES)
        mean, scale, coef = (_numbers(raw, key, k) for key in ("mean", "scale", "coef"))
        if np.any(scale <= 0):
            raise AbstainerError("abstention: every scale must be positive")
        intercept, threshold = raw.get("intercept"), raw.get("threshold")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (intercept, threshold)
        ):
            raise AbstainerError("abstention: intercept and threshold must be finite numbers")
        if not 0.0 < float(threshold) < 1.0:
            raise AbstainerError("abstention: threshold must lie strictly between 0 and 1")
        return cls(mean, scale, coef, float(intercept), float(threshold))

    def to_dict(self) -> dict[str, Any]:
        """The JSON numbers (the artifact file adds how they were made)."""
        return {
            "format": FORMAT,
            "features": list(FEATURES),
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "coef": [float(v) for v in self.coef],
            "intercept": self.intercept,
            "threshold": self.threshold,
        }

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` uncertainty in [0, 1]: the combiner's probability that the input is foreign."""
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.coef
        return 1.0 / (1.0 + np.exp(-np.clip(z + self.intercept, -50.0, 50.0)))

    def assess(self, result: Result, facts: Sequence[Mapping[str, float]]) -> list[Assessment]:
        """Each image's uncertainty and whether to abstain on it."""
        scores = self.scores(feature_matrix(result, facts))
        return [Assessment(bool(s >= self.threshold), round(float(s), 6)) for s in scores]


@dataclass(frozen=True)
class Assessment:
    """What the answer says about itself: abstained, and the uncertainty (None: not measured)."""

    abstained: bool
    uncertainty: float | None


#: The answer when no fitted combiner is loaded: never abstain, uncertainty unknown.
NOT_ASSESSED = Assessment(False, None)


def assess_batch(
    abstainer: Abstainer | None,
    result: Result,
    features: Sequence[Mapping[str, Any]],
    canvases: Sequence[np.ndarray],
    data: Sequence[bytes | None],
) -> list[Assessment]:
    """Serving's call for a result's images, in its row order (``data[i]`` None: pixels sent,
    no file); a failure to score never fails the predictions."""
    if abstainer is None:
        return [NOT_ASSESSED] * len(features)
    try:
        facts = [
            input_facts(f, canvas, raw)
            for f, canvas, raw in zip(features, canvases, data, strict=True)
        ]
        return abstainer.assess(result, facts)
    except Exception:
        log.exception("uncertainty not scored; answering without abstention")
        return [NOT_ASSESSED] * len(features)


def assess_one(
    abstainer: Abstainer | None,
    result: Result,
    features: Mapping[str, Any],
    canvas: np.ndarray,
    data: bytes | None,
) -> Assessment:
    """Serving's call for one upload: the batch form over a batch of one."""
    return assess_batch(abstainer, result, [features], [canvas], [data])[0]


def abstainer_from(
    raw: Mapping[str, Any] | None, error: str | None, version: str
) -> Abstainer | None:
    """The artifact's verified combiner JSON parsed, or None (logged) when it is unusable."""
    if raw is None:
        log.info("model version %s: no abstention (%s)", version, error or "none fitted")
        return None
    try:
        return Abstainer.from_dict(raw)
    except AbstainerError as exc:
        log.warning("model version %s: %s; answers will not abstain", version, exc)
        return None
