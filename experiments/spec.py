"""Validate the router part of a create body and fill every default, so a 400 can name the field.

``parse_experiment(body, models)`` takes the raw JSON body and the already-validated model ids of
``body["models"]`` (in order) and returns a normalised definition: plain JSON types, every default
present, ready to store and to hand to :func:`experiments.routers.build_router`.

Decisions this module makes (the DESIGN leaves them open):

* every model in ``models`` must be used by the router, as a served arm or a shadow: a listed model
  nothing routes to would only show up as an empty arm and a false sample-ratio alarm;
* an experiment needs at least two models (one model is an ensemble, not a comparison);
* ``weight`` on a model is read by ``weighted`` (required on every model) and ``random`` (all or
  none; none means uniform); any other router refuses it rather than silently ignoring it;
* fields that belong to another router (``canary_percentage`` on a ``weighted`` body, ...) or to
  ensembles (``aggregation``, ``threshold``) are refused for the same reason; keys this module does
  not know (``name``, ``description``, ...) are left to the caller;
* booleans are not numbers, NaN and infinities are refused, integers may be sent as ``1000.0``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.conditions import ConditionError, parse

log = logging.getLogger(__name__)

ROUTER_KINDS: tuple[str, ...] = (
    "weighted",
    "round_robin",
    "random",
    "canary",
    "feature_based",
    "bandit",
    "latency_based",
    "shadow",
)
"""The router names a create body may give as ``strategy``, in DESIGN order."""

BANDIT_ALGORITHMS: tuple[str, ...] = ("epsilon_greedy", "thompson")
REWARD_METRICS: tuple[str, ...] = ("accuracy",)
PROMOTION_METRICS: tuple[str, ...] = ("accuracy",)
GUARDRAIL_LIMITS: tuple[str, ...] = (
    "latency_p95_ms",
    "error_rate",
    "fallback_rate",
    "accuracy_drop",
)

DEFAULT_CANARY_PERCENTAGE = 10
DEFAULT_MAX_PERCENTAGE = 100
DEFAULT_PROMOTION_CRITERIA: dict[str, Any] = {
    "metric": "accuracy",
    "min_improvement": 0.01,
    "min_samples": 1000,
}
DEFAULT_BANDIT_EXPLORATION_RATE = 0.1
DEFAULT_REWARD_WINDOW = 1000
DEFAULT_LATENCY_WINDOW = 200
DEFAULT_LATENCY_EXPLORATION_RATE = 0.05
DEFAULT_SHADOW_PERCENTAGE = 100
DEFAULT_GUARDRAIL_MIN_SAMPLES = 100
DEFAULT_SEQUENTIAL_TUNING = 5000
MAX_WINDOW = 1_000_000
MAX_COUNT = 1_000_000_000
MAX_RULES = 100
MAX_WEIGHT = 1e9

_NOT_STICKY = ("bandit", "latency_based")
# Round-robin's point is the rotation, so it rotates every request unless asked to be sticky
# (the issue lists weighted, random, canary and feature-based as the sticky routers).
_DEFAULT_NOT_STICKY = (*_NOT_STICKY, "round_robin")

# Fields owned by one router; sending one with another strategy is refused, not ignored.
_ROUTER_FIELDS: dict[str, tuple[str, ...]] = {
    "weighted": (),
    "round_robin": (),
    "random": (),
    "canary": (
        "baseline_model",
        "canary_model",
        "canary_percentage",
        "step_percentage",
        "max_percentage",
        "promotion_criteria",
    ),
    "feature_based": ("rules", "default_model"),
    "bandit": ("algorithm", "bandit_exploration_rate", "reward_window", "reward_metric"),
    "latency_based": ("latency_window", "latency_exploration_rate"),
    "shadow": ("default_model", "shadow_models", "shadow_percentage"),
}
_FIELD_OWNERS: dict[str, tuple[str, ...]] = {}
for _kind, _fields in _ROUTER_FIELDS.items():
    for _field in _fields:
        _FIELD_OWNERS[_field] = (*_FIELD_OWNERS.get(_field, ()), _kind)
_ENSEMBLE_FIELDS = ("aggregation", "threshold")
#: Every key an experiment body may hold: a typo is refused, never silently ignored.
EXPERIMENT_KEYS = frozenset(
    [
        "name",
        "strategy",
        "models",
        "description",
        "control",
        "guardrails",
        "sequential_tuning",
        "sticky",
        *_ENSEMBLE_FIELDS,
        *_FIELD_OWNERS,
    ]
)


class SpecError(ValueError):
    """An invalid experiment field: ``field`` names it (``rules[1].condition``) for the 400."""

    def __init__(self, field: str, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.position = position


def finite_number(value: Any) -> float | None:
    """The value as a float if it is a finite JSON number, else None (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _number(
    value: Any,
    field: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    example: str,
) -> int | float:
    """Check a finite number in [low, high] (or (low, high]) and keep its JSON type."""
    low_text = "(" if low_open else "["
    span = f"{low_text}{low:g}, {high:g}]" if math.isfinite(high) else f"> {low:g}"
    number = finite_number(value)
    if number is None:
        raise SpecError(
            field, f"{field} must be a number in {span}, got {value!r}; send e.g. {example}"
        )
    below = number <= low if low_open else number < low
    if below or number > high:
        raise SpecError(field, f"{field} must be in {span}, got {value!r}; send e.g. {example}")
    return int(value) if isinstance(value, int) else number


def _integer(value: Any, field: str, low: int, high: int, *, example: str) -> int:
    """Check a whole number in [low, high]; 1000.0 counts, as JSON does not tell them apart."""
    number = finite_number(value)
    if number is None or number != math.floor(number):
        raise SpecError(
            field,
            f"{field} must be a whole number from {low} to {high}, got {value!r}; "
            f"send e.g. {example}",
        )
    if not low <= number <= high:
        raise SpecError(
            field, f"{field} must be from {low} to {high}, got {value!r}; send e.g. {example}"
        )
    return int(number)


def _model(value: Any, field: str, models: Sequence[str], role: str) -> str:
    """Check that a router field names one of the experiment's models."""
    listed = ", ".join(models)
    if not isinstance(value, str) or not value:
        raise SpecError(field, f"{field} must be a model id ({role}); send one of: {listed}")
    if value not in models:
        raise SpecError(
            field,
            f"{field} names {value!r}, which is not in models; send one of: {listed}, "
            "or add it to models",
        )
    return value


def _required(body: Mapping[str, Any], field: str, strategy: str, what: str) -> Any:
    """Fetch a field the router cannot do without, saying what it is for when it is missing."""
    value = body.get(field)
    if value is None:
        raise SpecError(field, f"{field} is required for strategy {strategy}: {what}")
    return value


def _required_model(
    body: Mapping[str, Any], field: str, strategy: str, models: Sequence[str], role: str
) -> str:
    """A router field that must name one of the experiment's models."""
    return _model(_required(body, field, strategy, role), field, models, role)


def _mapping(value: Any, field: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    """Check a JSON object whose keys all belong to ``allowed``."""
    if not isinstance(value, Mapping):
        raise SpecError(
            field, f"{field} must be a JSON object with keys among: {', '.join(allowed)}"
        )
    for key in value:
        if key not in allowed:
            raise SpecError(
                f"{field}.{key}",
                f"{field}.{key} is not a known key; use only: {', '.join(allowed)}",
            )
    return value


def _model_weights(body: Mapping[str, Any], models: Sequence[str]) -> list[tuple[int, Any]]:
    """Collect ``(index, weight)`` for every entry of ``body["models"]`` that carries a weight."""
    raw = body.get("models")
    entries = raw if isinstance(raw, Sequence) and not isinstance(raw, str | bytes) else []
    found: list[tuple[int, Any]] = []
    for index in range(len(models)):
        entry = entries[index] if index < len(entries) else None
        if isinstance(entry, Mapping) and entry.get("weight") is not None:
            found.append((index, entry["weight"]))
    return found


def _weights(
    body: Mapping[str, Any], models: Sequence[str], strategy: str
) -> dict[str, float] | None:
    """Read per-model weights: required for weighted, all-or-none for random, refused elsewhere."""
    given = _model_weights(body, models)
    if strategy not in ("weighted", "random"):
        if given:
            index = given[0][0]
            raise SpecError(
                f"models[{index}].weight",
                f"models[{index}].weight is not used by strategy {strategy}; remove it"
                + (" and set canary_percentage" if strategy == "canary" else "")
                + " (weights apply to strategies weighted and random)",
            )
        return None
    if not given and strategy == "random":
        return None
    present = {index for index, _ in given}
    or_none = " (or on none, for a uniform split)" if strategy == "random" else ""
    for index in range(len(models)):
        if index not in present:
            raise SpecError(
                f"models[{index}].weight",
                f"models[{index}].weight is missing: strategy {strategy} needs a weight >= 0 on "
                f"every model{or_none}",
            )
    weights: dict[str, float] = {}
    for index, value in given:
        field = f"models[{index}].weight"
        weights[models[index]] = float(_number(value, field, 0.0, MAX_WEIGHT, example="0.5"))
    total = math.fsum(weights.values())
    if total <= 0.0:
        raise SpecError(
            "models[0].weight", "at least one model needs a weight > 0; send e.g. 0.5 on two models"
        )
    return {model: weight / total for model, weight in weights.items()}


def _check_all_used(models: Sequence[str], used: Sequence[str], strategy: str) -> None:
    """Refuse listed models the router never routes to: they would be empty arms forever."""
    for index, model in enumerate(models):
        if model not in used:
            raise SpecError(
                f"models[{index}]",
                f"models[{index}] ({model!r}) is not used by the {strategy} router; remove it from "
                "models or route to it",
            )


def _canary(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """Baseline, canary, starting percentage, optional ramp and promotion criteria."""
    baseline = _required_model(
        body, "baseline_model", "canary", models, "the model that serves most traffic"
    )
    canary = _required_model(
        body, "canary_model", "canary", models, "the new model that gets canary_percentage"
    )
    if canary == baseline:
        raise SpecError(
            "canary_model", "canary_model must differ from baseline_model; send the new model's id"
        )
    _check_all_used(models, (baseline, canary), "canary")
    percentage = body.get("canary_percentage")
    percentage = (
        DEFAULT_CANARY_PERCENTAGE
        if percentage is None
        else _number(percentage, "canary_percentage", 0.0, 100.0, example="10")
    )
    step = body.get("step_percentage")
    if step is not None:
        step = _number(step, "step_percentage", 0.0, 100.0, low_open=True, example="10")
    maximum = body.get("max_percentage")
    maximum = (
        DEFAULT_MAX_PERCENTAGE
        if maximum is None
        else _number(maximum, "max_percentage", 0.0, 100.0, example="50")
    )
    if maximum < percentage:
        raise SpecError(
            "max_percentage",
            f"max_percentage ({maximum:g}) must be at least canary_percentage ({percentage:g}) "
            "and at most 100",
        )
    return {
        "baseline_model": baseline,
        "canary_model": canary,
        "canary_percentage": percentage,
        "step_percentage": step,
        "max_percentage": maximum,
        "promotion_criteria": _promotion_criteria(body.get("promotion_criteria")),
    }


def _promotion_criteria(value: Any) -> dict[str, Any]:
    """Fill and check when a canary counts as better: metric, minimum gain, minimum sample."""
    criteria = dict(DEFAULT_PROMOTION_CRITERIA)
    if value is None:
        return criteria
    given = _mapping(value, "promotion_criteria", (*DEFAULT_PROMOTION_CRITERIA, "max_samples"))
    if given.get("metric") is not None:
        if given["metric"] not in PROMOTION_METRICS:
            raise SpecError(
                "promotion_criteria.metric",
                f"promotion_criteria.metric must be one of: {', '.join(PROMOTION_METRICS)}",
            )
        criteria["metric"] = given["metric"]
    if given.get("min_improvement") is not None:
        criteria["min_improvement"] = _number(
            given["min_improvement"],
            "promotion_criteria.min_improvement",
            0.0,
            1.0,
            example="0.01 (one accuracy point)",
        )
    if given.get("min_samples") is not None:
        criteria["min_samples"] = _integer(
            given["min_samples"], "promotion_criteria.min_samples", 1, MAX_COUNT, example="1000"
        )
    if given.get("max_samples") is not None:
        criteria["max_samples"] = _integer(
            given["max_samples"],
            "promotion_criteria.max_samples",
            criteria["min_samples"],
            MAX_COUNT,
            example="20000 (stop as inconclusive after that many labelled canary outcomes)",
        )
    return criteria


def _feature_based(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """Ordered rules (condition -> model, first match wins) and the model for everything else."""
    rules = _required(body, "rules", "feature_based", "a list of {condition, model} objects")
    if not isinstance(rules, Sequence) or isinstance(rules, str | bytes) or not rules:
        raise SpecError(
            "rules",
            'rules must be a non-empty list of {"condition": "width > 500", "model": ...}',
        )
    if len(rules) > MAX_RULES:
        raise SpecError("rules", f"rules holds {len(rules)} rules; at most {MAX_RULES} are allowed")
    normalised: list[dict[str, str]] = []
    for index, rule in enumerate(rules):
        field = f"rules[{index}]"
        rule = _mapping(rule, field, ("condition", "model"))
        condition = rule.get("condition")
        if not isinstance(condition, str) or not condition.strip():
            raise SpecError(
                f"{field}.condition",
                f"{field}.condition must be a non-empty string such as \"format == 'jpeg'\"",
            )
        try:
            parse(condition)
        except ConditionError as exc:
            raise SpecError(
                f"{field}.condition", f"{field}.condition: {exc}", exc.position
            ) from exc
        if rule.get("model") is None:
            raise SpecError(
                f"{field}.model",
                f"{field}.model is required: the model that serves requests matching the condition",
            )
        model = _model(rule["model"], f"{field}.model", models, "served when the condition holds")
        normalised.append({"condition": condition, "model": model})
    default = _required_model(
        body, "default_model", "feature_based", models, "the model for requests no rule matches"
    )
    _check_all_used(models, [rule["model"] for rule in normalised] + [default], "feature_based")
    return {"rules": normalised, "default_model": default}


def _bandit(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """Algorithm, exploration and the reward window the caller measures accuracy over."""
    algorithm = body.get("algorithm")
    algorithm = "epsilon_greedy" if algorithm is None else algorithm
    if algorithm not in BANDIT_ALGORITHMS:
        raise SpecError(
            "algorithm",
            f"algorithm must be one of: {', '.join(BANDIT_ALGORITHMS)}; got {algorithm!r}",
        )
    rate = body.get("bandit_exploration_rate")
    rate = (
        DEFAULT_BANDIT_EXPLORATION_RATE
        if rate is None
        else _number(rate, "bandit_exploration_rate", 0.0, 1.0, example="0.1")
    )
    window = body.get("reward_window")
    window = (
        DEFAULT_REWARD_WINDOW
        if window is None
        else _integer(window, "reward_window", 1, MAX_WINDOW, example="1000")
    )
    metric = body.get("reward_metric")
    metric = "accuracy" if metric is None else metric
    if metric not in REWARD_METRICS:
        raise SpecError(
            "reward_metric",
            f"reward_metric must be one of: {', '.join(REWARD_METRICS)}; got {metric!r}",
        )
    return {
        "algorithm": algorithm,
        "bandit_exploration_rate": rate,
        "reward_window": window,
        "reward_metric": metric,
    }


def _latency_based(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """Window of recent latencies per arm and how often a slower arm is re-measured."""
    window = body.get("latency_window")
    window = (
        DEFAULT_LATENCY_WINDOW
        if window is None
        else _integer(window, "latency_window", 1, MAX_WINDOW, example="200")
    )
    rate = body.get("latency_exploration_rate")
    rate = (
        DEFAULT_LATENCY_EXPLORATION_RATE
        if rate is None
        else _number(rate, "latency_exploration_rate", 0.0, 1.0, example="0.05")
    )
    return {"latency_window": window, "latency_exploration_rate": rate}


def _shadow(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """The served model, the models run on a copy of the request, and how often."""
    default = _required_model(
        body, "default_model", "shadow", models, "the model whose answer is returned"
    )
    shadows = _required(body, "shadow_models", "shadow", "a list of models run after the answer")
    if not isinstance(shadows, Sequence) or isinstance(shadows, str | bytes) or not shadows:
        raise SpecError(
            "shadow_models", "shadow_models must be a non-empty list of model ids from models"
        )
    checked: list[str] = []
    for index, model in enumerate(shadows):
        field = f"shadow_models[{index}]"
        model = _model(model, field, models, "run after the answer, never served")
        if model == default:
            raise SpecError(
                field, f"{field} is the default_model; a model cannot shadow itself, remove it"
            )
        if model in checked:
            raise SpecError(field, f"{field} ({model!r}) is listed twice; list each shadow once")
        checked.append(model)
    _check_all_used(models, [default, *checked], "shadow")
    percentage = body.get("shadow_percentage")
    percentage = (
        DEFAULT_SHADOW_PERCENTAGE
        if percentage is None
        else _number(percentage, "shadow_percentage", 0.0, 100.0, low_open=True, example="100")
    )
    return {"default_model": default, "shadow_models": checked, "shadow_percentage": percentage}


def _guardrails(value: Any) -> dict[str, Any]:
    """Fill and check the rollback limits; an unset limit is ``None`` (not enforced)."""
    guardrails: dict[str, Any] = {key: None for key in GUARDRAIL_LIMITS}
    guardrails["min_samples"] = DEFAULT_GUARDRAIL_MIN_SAMPLES
    if value is None:
        return guardrails
    given = _mapping(value, "guardrails", (*GUARDRAIL_LIMITS, "min_samples"))
    if given.get("latency_p95_ms") is not None:
        guardrails["latency_p95_ms"] = _number(
            given["latency_p95_ms"],
            "guardrails.latency_p95_ms",
            0.0,
            math.inf,
            low_open=True,
            example="250",
        )
    for key, example in (
        ("error_rate", "0.05"),
        ("fallback_rate", "0.2"),
        ("accuracy_drop", "0.02"),
    ):
        if given.get(key) is not None:
            guardrails[key] = _number(given[key], f"guardrails.{key}", 0.0, 1.0, example=example)
    if given.get("min_samples") is not None:
        guardrails["min_samples"] = _integer(
            given["min_samples"], "guardrails.min_samples", 1, MAX_COUNT, example="100"
        )
    return guardrails


_KIND_PARSERS = {
    "canary": _canary,
    "feature_based": _feature_based,
    "bandit": _bandit,
    "latency_based": _latency_based,
    "shadow": _shadow,
}


def served_arms(definition: Mapping[str, Any]) -> tuple[str, ...]:
    """The models that can answer a request (shadows excluded), in ``models`` order."""
    strategy = definition["strategy"]
    if strategy == "shadow":
        return (definition["default_model"],)
    if strategy == "canary":
        used = {definition["baseline_model"], definition["canary_model"]}
    elif strategy == "feature_based":
        used = {rule["model"] for rule in definition["rules"]} | {definition["default_model"]}
    else:
        return tuple(definition["models"])
    return tuple(model for model in definition["models"] if model in used)


def shadow_arms(definition: Mapping[str, Any]) -> tuple[str, ...]:
    """The models that run after the answer and are recorded but never served."""
    if definition["strategy"] != "shadow":
        return ()
    return tuple(definition["shadow_models"])


def _default_control(strategy: str, fields: Mapping[str, Any], models: Sequence[str]) -> str:
    """The arm decisions roll back to when the body names none."""
    if strategy == "canary":
        return fields["baseline_model"]
    if strategy in ("shadow", "feature_based"):
        return fields["default_model"]
    return models[0]


def parse_experiment(body: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """Turn a create body into a complete definition, or raise SpecError naming the bad field."""
    if not isinstance(body, Mapping):
        raise SpecError("body", "the body must be a JSON object")
    strategy = body.get("strategy")
    if strategy not in ROUTER_KINDS:
        raise SpecError(
            "strategy",
            f"strategy must be ensemble or a router: {', '.join(ROUTER_KINDS)}; got {strategy!r}",
        )
    if (
        isinstance(models, str)
        or not all(isinstance(model, str) and model for model in models)
        or len(set(models)) != len(models)
    ):
        raise SpecError("models", "models must list distinct model ids")
    models = list(models)
    if len(models) < 2:
        raise SpecError(
            "models",
            f"strategy {strategy} compares models, so models needs at least two entries; for a "
            "single model use its id as the strategy",
        )
    for field in _ENSEMBLE_FIELDS:
        if body.get(field) is not None:
            raise SpecError(
                field, f"{field} applies to strategy ensemble only; remove it for {strategy}"
            )
    unknown = sorted(key for key in body if key not in EXPERIMENT_KEYS)
    if unknown:
        raise SpecError(
            unknown[0], f"{unknown[0]} is not a field of an experiment; check its spelling"
        )
    for field, kinds in _FIELD_OWNERS.items():
        if body.get(field) is not None and strategy not in kinds:
            raise SpecError(
                field,
                f"{field} applies to strategy {' and '.join(kinds)}, not {strategy}; remove it",
            )

    definition: dict[str, Any] = {}
    if isinstance(body.get("name"), str):
        definition["name"] = body["name"]
    definition["strategy"] = strategy
    definition["models"] = models
    weights = _weights(body, models, strategy)
    if strategy == "weighted" or (strategy == "random" and weights is not None):
        definition["weights"] = weights
    elif strategy == "random":
        definition["weights"] = {model: 1.0 / len(models) for model in models}
    fields = _KIND_PARSERS[strategy](body, models) if strategy in _KIND_PARSERS else {}
    definition.update(fields)

    served = served_arms(definition)
    control = body.get("control")
    if control is None:
        control = _default_control(strategy, fields, models)
    else:
        control = _model(control, "control", models, "the arm a rollback returns to")
        if control not in served:
            raise SpecError(
                "control",
                f"control must be a served arm ({', '.join(served)}); {control!r} is a shadow",
            )
    definition["control"] = control
    definition["guardrails"] = _guardrails(body.get("guardrails"))
    tuning = body.get("sequential_tuning")
    definition["sequential_tuning"] = (
        DEFAULT_SEQUENTIAL_TUNING
        if tuning is None
        else _integer(tuning, "sequential_tuning", 1, MAX_COUNT, example="5000")
    )
    sticky = body.get("sticky")
    if sticky is None:
        sticky = strategy not in _DEFAULT_NOT_STICKY
    elif not isinstance(sticky, bool):
        raise SpecError("sticky", f"sticky must be true or false, got {sticky!r}")
    elif sticky and strategy in _NOT_STICKY:
        raise SpecError(
            "sticky",
            f"strategy {strategy} routes every request anew, so sticky must be false; remove it",
        )
    definition["sticky"] = sticky
    log.debug("parsed %s experiment over %s", strategy, ", ".join(models))
    return definition


def ab_definition(boosting_share: float) -> dict[str, Any]:
    """The built-in ``ab`` experiment: router random, Boosting's share from ``AB_SPLIT``."""
    share = _number(boosting_share, "AB_SPLIT", 0.0, 1.0, example="0.5")
    body = {
        "name": "ab",
        "strategy": "random",
        "models": [
            {"model_id": "bagging", "weight": 1.0 - float(share)},
            {"model_id": "boosting", "weight": float(share)},
        ],
        "control": "bagging",
    }
    definition = parse_experiment(body, ["bagging", "boosting"])
    # Not renormalised, so Boosting's range ends at exactly AB_SPLIT as in the first release.
    definition["weights"] = {"bagging": 1.0 - float(share), "boosting": float(share)}
    return definition
