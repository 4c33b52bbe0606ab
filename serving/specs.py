"""Validate a ``POST /api/v1/inference/ensemble`` body into a stored definition.

The common part (name, strategy, models) and the ensemble part (aggregation, weights,
threshold) live here; the router part of an experiment is ``experiments.spec``. Every error is a
``SpecError`` naming the field, which the HTTP layer answers with 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ensembles.composite import AGGREGATIONS
from experiments.spec import ROUTER_KINDS, SpecError, parse_experiment

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_MODELS = 32
MAX_WEIGHT = 1e9
#: Keys a create body may hold besides the router's own (checked by ``experiments.spec``).
_COMMON_KEYS = ("name", "strategy", "models", "description")
_ENSEMBLE_KEYS = ("aggregation", "threshold")
_MODEL_KEYS = ("model_id", "weight")


@dataclass(frozen=True)
class ParsedBody:
    """A valid create body: what to store and which table it goes to."""

    kind: str  # "ensemble" | "experiment"
    name: str
    definition: dict[str, Any]


def check_name(value: Any, reserved: frozenset[str]) -> str:
    """A new name: lower-case words and dashes, not a built-in."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise SpecError(
            "name",
            "name must be 1-63 lower-case letters, digits or dashes, starting with a letter or "
            f"digit (e.g. light-vote); got {str(value)[:70]!r}",
        )
    if value in reserved:
        raise SpecError("name", f"name {value!r} is reserved for a built-in; choose another")
    return value


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a bool; an integer too big for a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # json.loads keeps 1e400 written as digits as an exact int
        return False


def parse_models(value: Any, known: Sequence[str]) -> list[dict]:
    """``models``: a non-empty list of ``{"model_id", "weight"?}``, each a known model, once."""
    if not isinstance(value, list) or not value:
        raise SpecError(
            "models",
            'models must be a non-empty list like [{"model_id": "bagging-0", "weight": 0.6}]',
        )
    if len(value) > MAX_MODELS:
        raise SpecError("models", f"models may list at most {MAX_MODELS} models")
    seen: set[str] = set()
    models = []
    for i, entry in enumerate(value):
        field = f"models[{i}]"
        if not isinstance(entry, Mapping):
            raise SpecError(field, f'{field} must be an object like {{"model_id": "bagging-0"}}')
        unknown = sorted(set(entry) - set(_MODEL_KEYS))
        if unknown:
            raise SpecError(f"{field}.{unknown[0]}", f"{field} has unknown key {unknown[0]!r}")
        model_id = entry.get("model_id")
        if not isinstance(model_id, str) or model_id not in known:
            raise SpecError(
                f"{field}.model_id",
                f"{field}.model_id must name a member or an ensemble; got "
                f"{str(model_id)[:70]!r}. Known: {', '.join(known)}",
            )
        if model_id in seen:
            raise SpecError(f"{field}.model_id", f"{model_id!r} is listed twice in models")
        seen.add(model_id)
        weight = entry.get("weight")
        if weight is not None and (not _is_number(weight) or not 0 <= weight <= MAX_WEIGHT):
            raise SpecError(
                f"{field}.weight",
                f"{field}.weight must be a number from 0 to {MAX_WEIGHT:g}, got {weight!r}",
            )
        models.append({"model_id": model_id, "weight": weight})
    return models


def parse_ensemble(body: Mapping[str, Any], models: list[dict]) -> dict[str, Any]:
    """The ensemble part: an aggregation, weights (normalised) and a cascade threshold."""
    unknown = sorted(set(body) - set(_COMMON_KEYS) - set(_ENSEMBLE_KEYS))
    if unknown:
        raise SpecError(
            unknown[0],
            f"{unknown[0]} is not a field of strategy ensemble; ensembles take aggregation, "
            "models and (cascade) threshold",
        )
    aggregation = body.get("aggregation", "average")
    if aggregation not in AGGREGATIONS:
        raise SpecError(
            "aggregation",
            f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {str(aggregation)[:40]!r}",
        )
    weights = [m["weight"] for m in models]
    if aggregation == "weighted_average" and any(w is None for w in weights):
        missing = weights.index(None)
        raise SpecError(
            f"models[{missing}].weight", "weighted_average needs a weight on every model"
        )
    values = [1.0 if w is None else float(w) for w in weights]
    if math.fsum(values) <= 0:
        raise SpecError("models[0].weight", "at least one model weight must be > 0")
    if aggregation == "cascade" and 0 in values:
        # A cascade renormalises over the members it has run so far: each needs a share.
        zero = values.index(0)
        raise SpecError(
            f"models[{zero}].weight",
            f"models[{zero}].weight must be > 0 in a cascade (leave a model out instead)",
        )
    definition: dict[str, Any] = {
        "strategy": "ensemble",
        "aggregation": aggregation,
        "models": [
            {"model_id": m["model_id"], "weight": v / math.fsum(values)}
            for m, v in zip(models, values, strict=True)
        ],
    }
    threshold = body.get("threshold")
    if aggregation == "cascade":
        if threshold is not None and (not _is_number(threshold) or not 0 < threshold <= 1):
            raise SpecError("threshold", f"threshold must be in (0, 1], got {threshold!r}")
        definition["threshold"] = None if threshold is None else float(threshold)
    elif threshold is not None:
        raise SpecError("threshold", "threshold applies to aggregation cascade only")
    if aggregation == "stacking" and len(models) < 2:
        raise SpecError("models", "stacking needs at least two models to learn from")
    return definition


def parse_body(body: Any, *, known: Sequence[str], reserved: frozenset[str]) -> ParsedBody:
    """Validate a create body against the models that exist now."""
    if not isinstance(body, Mapping):
        raise SpecError("body", 'send a JSON object like {"name": "light-vote", "models": [...]}')
    name = check_name(body.get("name"), reserved)
    strategy = body.get("strategy", "ensemble")
    if strategy != "ensemble" and strategy not in ROUTER_KINDS:
        raise SpecError(
            "strategy",
            f"strategy must be ensemble or a router ({', '.join(ROUTER_KINDS)}); got "
            f"{str(strategy)[:40]!r}",
        )
    models = parse_models(body.get("models"), known)
    if strategy == "ensemble":
        definition = parse_ensemble(body, models)
        kind = "ensemble"
    else:
        definition = parse_experiment(body, [m["model_id"] for m in models])
        kind = "experiment"
    definition["name"] = name
    if isinstance(body.get("description"), str):
        definition["description"] = body["description"][:500]
    return ParsedBody(kind=kind, name=name, definition=definition)
