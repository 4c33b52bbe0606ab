"""The prediction service shared by the HTML views, the JSON API and ``flask simulate``.

preprocess -> pick the arm (A/B) -> ``bundle.predict`` -> record one row -> the contract dict.
Errors come out typed: ``PreprocessError`` (bad upload, with its own status) or ``ServiceError``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import current_app

import store
from ensembles.base import EnsembleError, Result
from ensembles.bundle import EnsembleBundle
from experiments.assignment import assign_arm, hash_client_id
from models.data import to_tensor
from models.preprocess import to_uint8_canvas
from store.models import new_id

log = logging.getLogger(__name__)

#: What a client may ask for; "ab" is served by bagging or boosting.
CHOICES: tuple[str, ...] = ("bagging", "boosting", "stacking", "ab")
MAX_CLIENT_ID_LENGTH = 200
#: A class index written as text: a few ASCII digits.
_INDEX_TEXT = re.compile(r"[0-9]{1,4}")
#: Contract fields that are also columns of ``predictions``.
_STORED_ANSWER = (
    "label",
    "class_index",
    "confidence",
    "probabilities",
    "members",
    "fallback",
    "degraded",
    "latency_ms",
)


class ServiceError(Exception):
    """A request the service cannot fulfil; ``status_code`` and the message go to the client."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class LoadedModels:
    """The ensembles this process loaded at start-up, or why it has none."""

    bundle: EnsembleBundle | None
    error: str | None = None


@dataclass
class Served:
    """A served prediction: the contract body plus the 28x28 canvas the model saw."""

    body: dict[str, Any]
    canvas: np.ndarray


def loaded_models() -> LoadedModels:
    """What ``create_app`` loaded for this process (the bundle may be None)."""
    return current_app.extensions["chorus_models"]


def get_bundle() -> EnsembleBundle:
    """The process's loaded ensembles, or a 503 saying why there are none."""
    models = loaded_models()
    if models.bundle is None:
        raise ServiceError(
            f"No model is loaded ({models.error}). Ask the operator to train or install an "
            "artifact (make train) and restart the service.",
            503,
        )
    return models.bundle


def check_strategy(strategy: str | None) -> str:
    """Return a valid strategy name or raise a 400 listing the choices."""
    if not strategy:
        raise ServiceError(f'"strategy" is required: choose one of {", ".join(CHOICES)}.')
    if strategy not in CHOICES:
        raise ServiceError(
            f"Unknown strategy {strategy[:40]!r}: choose one of {', '.join(CHOICES)}."
        )
    return strategy


def check_client_id(client_id: str | None) -> str | None:
    """Blank means anonymous; overly long ids are refused rather than silently truncated."""
    if client_id is None or not client_id.strip():
        return None
    if len(client_id) > MAX_CLIENT_ID_LENGTH:
        raise ServiceError(f"client_id is longer than {MAX_CLIENT_ID_LENGTH} characters.")
    return client_id


def _milliseconds(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


def contract_body(
    result: Result, prediction_id: str, strategy: str, version: str, latency_ms: float
) -> dict[str, Any]:
    """The ``POST /api/v1/predict`` answer for row 0 of a result, keys in contract order."""
    index = int(result.predictions[0])
    row = result.probabilities[0]
    probabilities = {name: float(p) for name, p in zip(result.classes, row, strict=True)}
    return {
        "prediction_id": prediction_id,
        "strategy": strategy,
        "arm": result.strategy,
        "label": result.classes[index],
        "class_index": index,
        "confidence": float(result.confidences[0]),
        "probabilities": probabilities,
        "members": result.members_for(0),
        "fallback": result.fallback.to_dict() if result.fallback else None,
        "degraded": list(result.degraded),
        "model_version": version,
        "latency_ms": latency_ms,
    }


def predict_image(data: bytes, strategy: str, client_id: str | None = None) -> Served:
    """Classify one uploaded image with the requested strategy and record the outcome."""
    strategy = check_strategy(strategy)
    client_id = check_client_id(client_id)
    bundle = get_bundle()
    config = current_app.config
    started = time.perf_counter()
    canvas = to_uint8_canvas(data, max_pixels=config["MAX_IMAGE_PIXELS"])
    arm = assign_arm(client_id, config["AB_SPLIT"]) if strategy == "ab" else strategy
    row: dict[str, Any] = {
        "id": new_id(),
        "strategy": strategy,
        "arm": arm,
        "model_version": bundle.version,
        "client_hash": hash_client_id(client_id) if client_id else None,
        "image_sha256": hashlib.sha256(data).hexdigest(),
    }
    session = store.get_session()
    try:
        result = bundle.predict(arm, to_tensor(canvas[None]))
    except Exception as exc:
        store.add_prediction(
            session, **row, latency_ms=_milliseconds(started), error=f"{type(exc).__name__}: {exc}"
        )
        if isinstance(exc, EnsembleError):
            log.error("prediction %s failed (%s): %s", row["id"], arm, exc)
            raise ServiceError(
                f"The {arm} ensemble could not answer: {exc}. Try another strategy, or ask the "
                "operator to check the model artifact.",
                503,
            ) from exc
        raise
    body = contract_body(result, row["id"], strategy, bundle.version, _milliseconds(started))
    store.add_prediction(session, **row, **{key: body[key] for key in _STORED_ANSWER})
    log.info(
        "prediction %s: %s via %s -> %s (%.3f) in %.1f ms%s",
        row["id"],
        strategy,
        arm,
        body["label"],
        body["confidence"],
        body["latency_ms"],
        f", fallback {body['fallback']['model']}" if body["fallback"] else "",
    )
    return Served(body=body, canvas=canvas)


def parse_label(value: Any, classes: tuple[str, ...]) -> int:
    """A class name (any case) or index -> index; anything else is a 400 listing the classes."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only, and short: str.isdigit() accepts "²", which int() then refuses.
        if _INDEX_TEXT.fullmatch(text) and int(text) < len(classes):
            return int(text)
        lowered = [name.lower() for name in classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    raise ServiceError(
        f'"label" must be a class name or an index 0-{len(classes) - 1}; the classes are: '
        + ", ".join(classes)
        + "."
    )


def find_prediction(prediction_id: str) -> store.Prediction:
    """The stored prediction, or a 404 that says what to check."""
    prediction = None
    if len(prediction_id) == 32 and all(c in "0123456789abcdef" for c in prediction_id):
        prediction = store.get_prediction(store.get_session(), prediction_id)
    if prediction is None:
        raise ServiceError(
            f"No prediction with id {prediction_id[:64]!r}. Use the prediction_id that "
            "POST /api/v1/predict returned.",
            404,
        )
    return prediction


def check_answered(prediction: store.Prediction) -> None:
    """A failed prediction has no answer to judge: 409."""
    if prediction.error is not None or prediction.class_index is None:
        raise ServiceError(
            "This prediction failed, so there is no answer to judge. Predict again and give "
            "feedback on the new prediction.",
            409,
        )


def give_feedback(prediction_id: str, label: Any) -> bool:
    """Record the true class (name or index) of a prediction's image; True if it was right."""
    return record_verdict(find_prediction(prediction_id), label)


def record_verdict(prediction: store.Prediction, label: Any) -> bool:
    """Store the true class for an already loaded prediction; True if the prediction was right."""
    check_answered(prediction)
    true_class_index = parse_label(label, tuple(prediction.probabilities or ()))
    feedback = store.record_feedback(store.get_session(), prediction, true_class_index)
    log.info(
        "feedback on %s: true class %d, correct=%s",
        prediction.id,
        true_class_index,
        feedback.correct,
    )
    return feedback.correct
