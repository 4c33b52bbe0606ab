"""The JSON answer of ``POST /api/v1/predict``, shaped in one place (DESIGN.md's contract)."""

from __future__ import annotations

from typing import Any

from ensembles.base import Result
from ensembles.uncertainty import NOT_ASSESSED, Assessment

#: Contract fields that are also columns of ``predictions``.
STORED_FIELDS: tuple[str, ...] = (
    "label",
    "class_index",
    "confidence",
    "probabilities",
    "members",
    "fallback",
    "degraded",
    "latency_ms",
    "members_used",
    "abstained",
    "uncertainty",
)


def prediction_body(
    result: Result,
    *,
    prediction_id: str,
    strategy: str,
    experiment: str | None,
    version: str,
    latency_ms: float,
    row: int = 0,
    assessment: Assessment = NOT_ASSESSED,
) -> dict[str, Any]:
    """The answer for one image of a result, keys in contract order."""
    index = int(result.predictions[row])
    probabilities = {
        name: float(p) for name, p in zip(result.classes, result.probabilities[row], strict=True)
    }
    body: dict[str, Any] = {
        "prediction_id": prediction_id,
        "strategy": strategy,
        "experiment": experiment,
        "arm": result.strategy,
        "label": result.classes[index],
        "class_index": index,
        "confidence": float(result.confidences[row]),
        "probabilities": probabilities,
        "members": result.members_for(row),
        "fallback": result.fallback.to_dict() if result.fallback else None,
        "degraded": list(result.degraded),
        "model_version": version,
        "latency_ms": latency_ms,
        # Not sure it is a clothing item at all; the label is still given (null: not scored).
        "abstained": assessment.abstained,
        "uncertainty": assessment.uncertainty,
    }
    if result.members_used is not None:
        body["members_used"] = int(result.members_used[row])
    return body
