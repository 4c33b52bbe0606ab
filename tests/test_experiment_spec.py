"""Create bodies for experiments: every default filled, every bad field named in the error."""

import copy
import math

import pytest

from experiments.conditions import ConditionError, parse
from experiments.spec import (
    ROUTER_KINDS,
    SpecError,
    ab_definition,
    parse_experiment,
    served_arms,
    shadow_arms,
)

GUARDRAIL_DEFAULTS = {
    "latency_p95_ms": None,
    "error_rate": None,
    "fallback_rate": None,
    "accuracy_drop": None,
    "min_samples": 100,
}

BODIES = {
    "weighted": {
        "strategy": "weighted",
        "models": [{"model_id": "a", "weight": 3}, {"model_id": "b", "weight": 1}],
    },
    "round_robin": {"strategy": "round_robin", "models": [{"model_id": "a"}, {"model_id": "b"}]},
    "random": {"strategy": "random", "models": [{"model_id": "a"}, {"model_id": "b"}]},
    "canary": {
        "strategy": "canary",
        "models": [{"model_id": "a"}, {"model_id": "b"}],
        "baseline_model": "a",
        "canary_model": "b",
    },
    "feature_based": {
        "strategy": "feature_based",
        "models": [{"model_id": "a"}, {"model_id": "b"}],
        "rules": [{"condition": "width > 500", "model": "b"}],
        "default_model": "a",
    },
    "bandit": {"strategy": "bandit", "models": [{"model_id": "a"}, {"model_id": "b"}]},
    "latency_based": {
        "strategy": "latency_based",
        "models": [{"model_id": "a"}, {"model_id": "b"}],
    },
    "shadow": {
        "strategy": "shadow",
        "models": [{"model_id": "a"}, {"model_id": "b"}],
        "default_model": "a",
        "shadow_models": ["b"],
    },
}


def ids(body):
    models = body.get("models")
    if not isinstance(models, list):
        return []
    return [m["model_id"] if isinstance(m, dict) else m for m in models]


def parse_body(body):
    return parse_experiment(body, ids(body))


def body_for(kind, **changes):
    body = copy.deepcopy(BODIES[kind])
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def error_for(body, models=None):
    with pytest.raises(SpecError) as info:
        parse_experiment(body, ids(body) if models is None else models)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.field.split("[")[0].split(".")[0] in str(error)  # the message names the field
    return error


# --- defaults ------------------------------------------------------------------------------------


def test_router_kinds_in_design_order():
    assert ROUTER_KINDS == (
        "weighted",
        "round_robin",
        "random",
        "canary",
        "feature_based",
        "bandit",
        "latency_based",
        "shadow",
    )


def common(control="a", sticky=True):
    return {
        "models": ["a", "b"],
        "control": control,
        "guardrails": GUARDRAIL_DEFAULTS,
        "sequential_tuning": 5000,
        "sticky": sticky,
    }


def test_weighted_defaults_and_normalised_weights():
    assert parse_body(BODIES["weighted"]) == {
        "strategy": "weighted",
        "weights": {"a": 0.75, "b": 0.25},
        **common(),
    }


def test_round_robin_defaults():
    assert parse_body(BODIES["round_robin"]) == {
        "strategy": "round_robin",
        **common(),
        "sticky": False,  # it rotates every request unless asked to be sticky
    }


def test_random_is_uniform_without_weights_and_weighted_with_them():
    assert parse_body(BODIES["random"]) == {
        "strategy": "random",
        "weights": {"a": 0.5, "b": 0.5},
        **common(),
    }
    weighted = body_for(
        "random", models=[{"model_id": "a", "weight": 1}, {"model_id": "b", "weight": 4}]
    )
    assert parse_body(weighted)["weights"] == pytest.approx({"a": 0.2, "b": 0.8})


def test_canary_defaults():
    assert parse_body(BODIES["canary"]) == {
        "strategy": "canary",
        "baseline_model": "a",
        "canary_model": "b",
        "canary_percentage": 10,
        "step_percentage": None,
        "max_percentage": 100,
        "promotion_criteria": {"metric": "accuracy", "min_improvement": 0.01, "min_samples": 1000},
        **common(),
    }


def test_canary_with_every_field():
    definition = parse_body(
        body_for(
            "canary",
            canary_percentage=5,
            step_percentage=5.5,
            max_percentage=50,
            promotion_criteria={"min_samples": 200, "max_samples": 5000},
            control="b",
        )
    )
    assert definition["canary_percentage"] == 5
    assert definition["step_percentage"] == 5.5
    assert definition["max_percentage"] == 50
    assert definition["promotion_criteria"] == {
        "metric": "accuracy",
        "min_improvement": 0.01,
        "min_samples": 200,
        "max_samples": 5000,
    }
    assert definition["control"] == "b"


def test_canary_control_defaults_to_the_baseline_whatever_the_order():
    body = body_for("canary", baseline_model="b", canary_model="a")
    assert parse_body(body)["control"] == "b"


def test_feature_based_defaults():
    assert parse_body(BODIES["feature_based"]) == {
        "strategy": "feature_based",
        "rules": [{"condition": "width > 500", "model": "b"}],
        "default_model": "a",
        **common(),
    }


def test_feature_based_control_is_the_default_model():
    body = body_for("feature_based", default_model="b", rules=[{"condition": "x", "model": "a"}])
    assert parse_body(body)["control"] == "b"


def test_bandit_defaults():
    assert parse_body(BODIES["bandit"]) == {
        "strategy": "bandit",
        "algorithm": "epsilon_greedy",
        "bandit_exploration_rate": 0.1,
        "reward_window": 1000,
        "reward_metric": "accuracy",
        **common(sticky=False),
    }


def test_bandit_with_every_field():
    definition = parse_body(
        body_for(
            "bandit",
            algorithm="thompson",
            bandit_exploration_rate=0,
            reward_window=500.0,
            reward_metric="accuracy",
            sticky=False,
        )
    )
    assert definition["algorithm"] == "thompson"
    assert definition["bandit_exploration_rate"] == 0
    assert definition["reward_window"] == 500 and isinstance(definition["reward_window"], int)


def test_latency_based_defaults():
    assert parse_body(BODIES["latency_based"]) == {
        "strategy": "latency_based",
        "latency_window": 200,
        "latency_exploration_rate": 0.05,
        **common(sticky=False),
    }


def test_shadow_defaults():
    assert parse_body(BODIES["shadow"]) == {
        "strategy": "shadow",
        "default_model": "a",
        "shadow_models": ["b"],
        "shadow_percentage": 100,
        **common(),
    }


def test_name_is_kept_when_given():
    assert parse_body({**BODIES["round_robin"], "name": "rr"})["name"] == "rr"


def test_guardrails_are_filled_and_kept():
    guardrails = {"latency_p95_ms": 250, "error_rate": 0.05, "accuracy_drop": 0.02}
    definition = parse_body(body_for("weighted", guardrails=guardrails))
    assert definition["guardrails"] == {**GUARDRAIL_DEFAULTS, **guardrails}
    definition = parse_body(
        body_for("weighted", guardrails={"min_samples": 30, "error_rate": None})
    )
    assert definition["guardrails"] == {**GUARDRAIL_DEFAULTS, "min_samples": 30}


def test_sequential_tuning_and_sticky_can_be_set():
    definition = parse_body(body_for("weighted", sequential_tuning=1000, sticky=False))
    assert definition["sequential_tuning"] == 1000
    assert definition["sticky"] is False


def test_null_fields_mean_default():
    body = body_for("bandit", algorithm=None, reward_window=None, sticky=None, control=None)
    assert parse_body(body) == parse_body(BODIES["bandit"])


def test_unknown_keys_are_left_to_the_caller():
    assert parse_body(body_for("round_robin", description="x")) == parse_body(BODIES["round_robin"])


def test_parse_does_not_mutate_the_body():
    body = body_for("canary", promotion_criteria={"min_samples": 5})
    before = copy.deepcopy(body)
    parse_body(body)
    assert body == before


# --- served and shadow arms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "served", "shadows"),
    [
        ("weighted", ("a", "b"), ()),
        ("round_robin", ("a", "b"), ()),
        ("random", ("a", "b"), ()),
        ("canary", ("a", "b"), ()),
        ("feature_based", ("a", "b"), ()),
        ("bandit", ("a", "b"), ()),
        ("latency_based", ("a", "b"), ()),
        ("shadow", ("a",), ("b",)),
    ],
)
def test_served_and_shadow_arms(kind, served, shadows):
    definition = parse_body(BODIES[kind])
    assert served_arms(definition) == served
    assert shadow_arms(definition) == shadows


def test_ab_definition_is_the_builtin_experiment():
    definition = ab_definition(0.3)
    assert definition["name"] == "ab"
    assert definition["strategy"] == "random"
    assert definition["models"] == ["bagging", "boosting"]
    assert definition["control"] == "bagging"
    assert definition["weights"] == {"bagging": 1.0 - 0.3, "boosting": 0.3}
    assert definition["sticky"] is True
    with pytest.raises(SpecError):
        ab_definition(1.5)


# --- 400 paths: one bad field each ---------------------------------------------------------------

TWO = [{"model_id": "a"}, {"model_id": "b"}]
THREE = [{"model_id": "a"}, {"model_id": "b"}, {"model_id": "c"}]

BAD = [
    # the body itself
    ("weighted", {"strategy": "ensemble"}, "strategy"),
    ("weighted", {"strategy": "magic"}, "strategy"),
    ("weighted", {"strategy": ...}, "strategy"),
    ("round_robin", {"models": [{"model_id": "a"}]}, "models"),
    ("round_robin", {"aggregation": "vote"}, "aggregation"),
    ("round_robin", {"threshold": 0.9}, "threshold"),
    # fields of another router
    ("weighted", {"canary_percentage": 20}, "canary_percentage"),
    ("weighted", {"default_model": "a"}, "default_model"),
    ("bandit", {"rules": [{"condition": "x", "model": "a"}]}, "rules"),
    ("bandit", {"latency_window": 10}, "latency_window"),
    ("canary", {"algorithm": "thompson"}, "algorithm"),
    ("shadow", {"reward_window": 5}, "reward_window"),
    # weights
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": 1}, {"model_id": "b"}]},
        "models[1].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": -1}, {"model_id": "b", "weight": 1}]},
        "models[0].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": 1}, {"model_id": "b", "weight": math.nan}]},
        "models[1].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": math.inf}, {"model_id": "b", "weight": 1}]},
        "models[0].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": True}, {"model_id": "b", "weight": 1}]},
        "models[0].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": "1"}, {"model_id": "b", "weight": 1}]},
        "models[0].weight",
    ),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": 0}, {"model_id": "b", "weight": 0}]},
        "models[0].weight",
    ),
    ("random", {"models": [{"model_id": "a", "weight": 1}, {"model_id": "b"}]}, "models[1].weight"),
    (
        "weighted",
        {"models": [{"model_id": "a", "weight": 1e300}, {"model_id": "b", "weight": 1e300}]},
        "models[0].weight",
    ),
    (
        "round_robin",
        {"models": [{"model_id": "a", "weight": 1}, {"model_id": "b"}]},
        "models[0].weight",
    ),
    (
        "canary",
        {"models": [{"model_id": "a"}, {"model_id": "b", "weight": 0.1}]},
        "models[1].weight",
    ),
    # canary
    ("canary", {"baseline_model": ...}, "baseline_model"),
    ("canary", {"baseline_model": "z"}, "baseline_model"),
    ("canary", {"baseline_model": 3}, "baseline_model"),
    ("canary", {"canary_model": ...}, "canary_model"),
    ("canary", {"canary_model": "z"}, "canary_model"),
    ("canary", {"canary_model": "a"}, "canary_model"),
    ("canary", {"models": THREE}, "models[2]"),
    ("canary", {"canary_percentage": 101}, "canary_percentage"),
    ("canary", {"canary_percentage": -1}, "canary_percentage"),
    ("canary", {"canary_percentage": "10"}, "canary_percentage"),
    ("canary", {"canary_percentage": True}, "canary_percentage"),
    ("canary", {"canary_percentage": math.nan}, "canary_percentage"),
    ("canary", {"canary_percentage": 10**400}, "canary_percentage"),
    ("canary", {"step_percentage": 0}, "step_percentage"),
    ("canary", {"step_percentage": 101}, "step_percentage"),
    ("canary", {"max_percentage": 5}, "max_percentage"),
    ("canary", {"max_percentage": 101}, "max_percentage"),
    ("canary", {"promotion_criteria": "accuracy"}, "promotion_criteria"),
    ("canary", {"promotion_criteria": {"metric": "f1"}}, "promotion_criteria.metric"),
    (
        "canary",
        {"promotion_criteria": {"min_improvement": 2}},
        "promotion_criteria.min_improvement",
    ),
    (
        "canary",
        {"promotion_criteria": {"min_improvement": -0.1}},
        "promotion_criteria.min_improvement",
    ),
    ("canary", {"promotion_criteria": {"min_samples": 0}}, "promotion_criteria.min_samples"),
    ("canary", {"promotion_criteria": {"min_samples": 1.5}}, "promotion_criteria.min_samples"),
    ("canary", {"promotion_criteria": {"alpha": 0.05}}, "promotion_criteria.alpha"),
    # max_samples below min_samples could never let a canary reach promotion
    (
        "canary",
        {"promotion_criteria": {"min_samples": 500, "max_samples": 100}},
        "promotion_criteria.max_samples",
    ),
    ("canary", {"promotion_criteria": {"max_samples": 2.5}}, "promotion_criteria.max_samples"),
    # feature_based
    ("feature_based", {"rules": ...}, "rules"),
    ("feature_based", {"rules": []}, "rules"),
    ("feature_based", {"rules": "width > 5"}, "rules"),
    ("feature_based", {"rules": [{"condition": "x", "model": "b"}] * 101}, "rules"),
    ("feature_based", {"rules": ["width > 5"]}, "rules[0]"),
    (
        "feature_based",
        {"rules": [{"condition": "x", "model": "b", "weight": 1}]},
        "rules[0].weight",
    ),
    ("feature_based", {"rules": [{"model": "b"}]}, "rules[0].condition"),
    ("feature_based", {"rules": [{"condition": "  ", "model": "b"}]}, "rules[0].condition"),
    ("feature_based", {"rules": [{"condition": 5, "model": "b"}]}, "rules[0].condition"),
    (
        "feature_based",
        {"rules": [{"condition": "x", "model": "b"}, {"condition": "x >"}]},
        "rules[1].condition",
    ),
    ("feature_based", {"rules": [{"condition": "x"}]}, "rules[0].model"),
    ("feature_based", {"rules": [{"condition": "x", "model": "z"}]}, "rules[0].model"),
    ("feature_based", {"default_model": ...}, "default_model"),
    ("feature_based", {"default_model": "z"}, "default_model"),
    ("feature_based", {"models": THREE}, "models[2]"),
    # bandit
    ("bandit", {"algorithm": "ucb"}, "algorithm"),
    ("bandit", {"bandit_exploration_rate": 1.5}, "bandit_exploration_rate"),
    ("bandit", {"bandit_exploration_rate": -0.1}, "bandit_exploration_rate"),
    ("bandit", {"bandit_exploration_rate": False}, "bandit_exploration_rate"),
    ("bandit", {"reward_window": 0}, "reward_window"),
    ("bandit", {"reward_window": 10.5}, "reward_window"),
    ("bandit", {"reward_window": 1_000_001}, "reward_window"),
    ("bandit", {"reward_window": "1000"}, "reward_window"),
    ("bandit", {"reward_window": 10**400}, "reward_window"),
    ("bandit", {"reward_metric": "f1"}, "reward_metric"),
    ("bandit", {"sticky": True}, "sticky"),
    # latency_based
    ("latency_based", {"latency_window": 0}, "latency_window"),
    ("latency_based", {"latency_window": math.inf}, "latency_window"),
    ("latency_based", {"latency_exploration_rate": 2}, "latency_exploration_rate"),
    ("latency_based", {"sticky": True}, "sticky"),
    # shadow
    ("shadow", {"default_model": ...}, "default_model"),
    ("shadow", {"default_model": "z"}, "default_model"),
    ("shadow", {"shadow_models": ...}, "shadow_models"),
    ("shadow", {"shadow_models": []}, "shadow_models"),
    ("shadow", {"shadow_models": "b"}, "shadow_models"),
    ("shadow", {"shadow_models": ["a"]}, "shadow_models[0]"),
    ("shadow", {"models": THREE, "shadow_models": ["b", "b"]}, "shadow_models[1]"),
    ("shadow", {"shadow_models": ["z"]}, "shadow_models[0]"),
    ("shadow", {"models": THREE}, "models[2]"),
    ("shadow", {"shadow_percentage": 0}, "shadow_percentage"),
    ("shadow", {"shadow_percentage": 100.5}, "shadow_percentage"),
    ("shadow", {"control": "b"}, "control"),
    # any experiment
    ("weighted", {"control": "z"}, "control"),
    ("weighted", {"control": 1}, "control"),
    ("weighted", {"guardrails": [1]}, "guardrails"),
    ("weighted", {"guardrails": {"p99_ms": 5}}, "guardrails.p99_ms"),
    ("weighted", {"guardrails": {"latency_p95_ms": 0}}, "guardrails.latency_p95_ms"),
    ("weighted", {"guardrails": {"latency_p95_ms": math.inf}}, "guardrails.latency_p95_ms"),
    ("weighted", {"guardrails": {"error_rate": 1.5}}, "guardrails.error_rate"),
    ("weighted", {"guardrails": {"fallback_rate": -0.1}}, "guardrails.fallback_rate"),
    ("weighted", {"guardrails": {"accuracy_drop": "2%"}}, "guardrails.accuracy_drop"),
    ("weighted", {"guardrails": {"min_samples": 0}}, "guardrails.min_samples"),
    ("weighted", {"sequential_tuning": 0}, "sequential_tuning"),
    ("weighted", {"sequential_tuning": True}, "sequential_tuning"),
    ("weighted", {"sequential_tuning": "5000"}, "sequential_tuning"),
    ("weighted", {"sticky": "yes"}, "sticky"),
    ("weighted", {"sticky": 1}, "sticky"),
]


@pytest.mark.parametrize(("kind", "changes", "field"), BAD, ids=[f"{k}-{f}" for k, _, f in BAD])
def test_bad_field_is_named(kind, changes, field):
    error = error_for(body_for(kind, **changes))
    assert error.field == field


def test_body_must_be_an_object():
    assert error_for(["weighted"], models=["a", "b"]).field == "body"


@pytest.mark.parametrize("models", [["a", "a"], ["a", ""], ["a", 3]])
def test_models_must_be_distinct_ids(models):
    assert error_for(BODIES["round_robin"], models=models).field == "models"


def test_messages_say_what_to_send():
    assert "send e.g. 10" in str(error_for(body_for("canary", canary_percentage=200)))
    message = str(error_for(body_for("canary", canary_model="z")))
    assert "a, b" in message and "'z'" in message


# --- hostile conditions --------------------------------------------------------------------------

HOSTILE = [
    "__import__('os').system('rm -rf /')",
    "width.__class__",
    "eval('1')",
    "lambda: 1",
    "width > 500; import os",
    "format == 'jpeg",
    "a == 1 == 2",
    "width > 500 and",
    "(" * 40 + "width" + ")" * 40,
    "w" * 2000,
    "x == $",
]


@pytest.mark.parametrize("condition", HOSTILE)
def test_hostile_conditions_bubble_up_with_their_position(condition):
    with pytest.raises(ConditionError) as parsed:
        parse(condition)
    rules = [{"condition": "width > 5", "model": "b"}, {"condition": condition, "model": "b"}]
    error = error_for(body_for("feature_based", rules=rules))
    assert error.field == "rules[1].condition"
    assert error.position == parsed.value.position
    assert isinstance(error.__cause__, ConditionError)
    assert f"position {parsed.value.position}" in str(error)
    assert str(error).startswith("rules[1].condition: ")


def test_known_condition_positions():
    error = error_for(
        body_for("feature_based", rules=[{"condition": "width > 500 and", "model": "b"}])
    )
    assert error.position == 15
    error = error_for(body_for("feature_based", rules=[{"condition": "eval('1')", "model": "b"}]))
    assert error.position == 4
