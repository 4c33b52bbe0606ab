"""experiments.decisions: guardrails, canary promotion and the ramp, on numbers alone."""

from __future__ import annotations

import pytest

from experiments.decisions import ArmInputs, canary_verdict, evaluate, guardrail_checks, ramp_target
from experiments.stats import RatioStats, compare, rate_exceeds, sequential_bound


def arm(
    served: int = 1000,
    errors: int = 0,
    fallbacks: int = 0,
    correct: int | None = None,
    labelled: int = 0,
    p95: float | None = None,
    latencies: int = 0,
) -> ArmInputs:
    return ArmInputs(
        served=served,
        errors=errors,
        fallbacks=fallbacks,
        latency_p95_ms=p95,
        latency_samples=latencies,
        accuracy=RatioStats.proportion(correct or 0, labelled),
    )


def breached(status: dict, metric: str) -> list[str]:
    return [c["arm"] for c in status["checks"] if c["metric"] == metric and c["breached"]]


def test_error_rate_needs_the_sequential_bound_above_the_limit_not_a_noisy_point() -> None:
    arms = {"a": arm(), "b": arm(served=170, errors=30), "c": arm(served=340, errors=60)}
    status = guardrail_checks({"error_rate": 0.04}, arms, "a")
    # b: 15% observed, far above the 4% limit, but 30 errors in 200 is not yet enough for an
    # always-valid bound (it may be checked after every request); 60 in 400 is.
    assert rate_exceeds(30, 200, 0.04)["breached"] is False
    assert breached(status, "error_rate") == ["c"]
    c = next(x for x in status["checks"] if x["arm"] == "c")
    assert c["observed"] == pytest.approx(60 / 400)
    assert 0.04 < c["bound"] < 60 / 400
    assert status["breached"] is True


def test_the_control_is_never_checked() -> None:
    arms = {"a": arm(served=100, errors=100), "b": arm()}
    status = guardrail_checks({"error_rate": 0.01}, arms, "a")
    assert {c["arm"] for c in status["checks"]} == {"b"}
    assert status["breached"] is False


def test_latency_needs_min_samples() -> None:
    limits = {"latency_p95_ms": 50.0}
    few = guardrail_checks(limits, {"a": arm(), "b": arm(p95=80.0, latencies=99)}, "a")
    enough = guardrail_checks(limits, {"a": arm(), "b": arm(p95=80.0, latencies=100)}, "a")
    fast = guardrail_checks(limits, {"a": arm(), "b": arm(p95=40.0, latencies=500)}, "a")
    assert not few["breached"] and enough["breached"] and not fast["breached"]
    custom = guardrail_checks(
        limits, {"a": arm(), "b": arm(p95=80.0, latencies=20)}, "a", min_samples=20
    )
    assert custom["breached"]


def test_fallback_rate_uses_served_requests() -> None:
    status = guardrail_checks(
        {"fallback_rate": 0.1}, {"a": arm(), "b": arm(served=400, fallbacks=120)}, "a"
    )
    assert breached(status, "fallback_rate") == ["b"]


def test_accuracy_drop_is_judged_with_the_always_valid_bound() -> None:
    control = arm(correct=920, labelled=1000)
    limits = {"accuracy_drop": 0.02}
    clear = guardrail_checks(limits, {"a": control, "b": arm(correct=820, labelled=1000)}, "a")
    slight = guardrail_checks(limits, {"a": control, "b": arm(correct=905, labelled=1000)}, "a")
    assert breached(clear, "accuracy_drop") == ["b"]
    assert not slight["breached"]
    check = clear["checks"][0]
    assert check["observed"] == pytest.approx(0.10)
    # The bound is the sequential upper bound of b - a, negated: an independent recomputation.
    result = compare(control.accuracy, RatioStats.proportion(820, 1000))["absolute"]
    _, upper = sequential_bound(result["difference"], result["se"], 2000, side="upper")
    assert check["bound"] == pytest.approx(-upper)
    assert check["bound"] > 0.02


def test_unset_limits_are_not_checked() -> None:
    status = guardrail_checks(
        {"error_rate": None, "latency_p95_ms": None, "min_samples": 100},
        {"a": arm(), "b": arm(served=0, errors=500)},
        "a",
    )
    assert status == {"limits": {}, "min_samples": 100, "breached": False, "checks": []}


CANARY = {
    "strategy": "canary",
    "baseline_model": "bagging",
    "canary_model": "stacking",
    "canary_percentage": 10,
    "step_percentage": 20,
    "max_percentage": 50,
    "promotion_criteria": {"metric": "accuracy", "min_improvement": 0.01, "min_samples": 900},
    "guardrails": {"error_rate": 0.05},
}


def test_a_clearly_better_canary_is_promoted_once_it_has_min_samples() -> None:
    baseline = arm(correct=8800, labelled=10000)
    early = canary_verdict(CANARY, 50, baseline, arm(correct=850, labelled=890))
    ready = canary_verdict(CANARY, 50, baseline, arm(correct=880, labelled=920))
    assert early.action != "promote"
    assert ready.action == "promote" and ready.model == "stacking"
    assert ready.evidence["sequential_ci_low"] > 0
    assert "beats bagging" in ready.reason


def test_a_small_gain_below_min_improvement_is_not_promoted() -> None:
    criteria = {
        **CANARY,
        "promotion_criteria": {**CANARY["promotion_criteria"], "min_improvement": 0.2},
    }
    verdict = canary_verdict(
        criteria, 50, arm(correct=8800, labelled=10000), arm(correct=9700, labelled=10000)
    )
    assert verdict.action is None


def test_a_worse_canary_is_rolled_back_before_min_samples() -> None:
    verdict = canary_verdict(
        CANARY, 10, arm(correct=9200, labelled=10000), arm(correct=300, labelled=500)
    )
    assert verdict.action == "rollback" and verdict.model == "bagging"
    assert verdict.evidence["sequential_ci_high"] < 0


def test_inconclusive_at_max_samples() -> None:
    definition = {
        **CANARY,
        "promotion_criteria": {**CANARY["promotion_criteria"], "max_samples": 2000},
    }
    verdict = canary_verdict(
        definition, 50, arm(correct=1840, labelled=2000), arm(correct=1842, labelled=2000)
    )
    assert verdict.action == "inconclusive" and verdict.model == "bagging"
    assert (
        canary_verdict(
            CANARY, 50, arm(correct=1840, labelled=2000), arm(correct=1842, labelled=2000)
        ).action
        is None
    )


def test_the_ramp_steps_as_labels_arrive_and_stops_at_max_percentage() -> None:
    # 10 -> 30 -> 50: two steps, due at 300 and 600 labelled canary outcomes (900 / 3).
    assert ramp_target(CANARY, 10, 299, 900) is None
    assert ramp_target(CANARY, 10, 300, 900) == 30
    stepped = {**CANARY, "canary_percentage": 30, "initial_canary_percentage": 10}
    assert ramp_target(stepped, 30, 599, 900) is None
    assert ramp_target(stepped, 30, 600, 900) == 50
    assert ramp_target({**stepped, "canary_percentage": 50}, 50, 10_000, 900) is None
    assert ramp_target({**CANARY, "step_percentage": None}, 10, 10_000, 900) is None
    verdict = canary_verdict(
        CANARY, 10, arm(correct=290, labelled=300), arm(correct=276, labelled=300)
    )
    assert verdict.action == "step" and verdict.percentage == 30


def test_a_guardrail_breach_rolls_back_even_a_winning_canary() -> None:
    arms = {
        "bagging": arm(correct=8800, labelled=10000),
        "stacking": arm(served=800, errors=200, correct=900, labelled=920),
    }
    verdict, status = evaluate(CANARY, "bagging", arms)
    assert status["breached"]
    assert verdict.action == "rollback" and verdict.model == "bagging"
    assert verdict.reason.startswith("guardrail breached: stacking error rate")
    assert verdict.evidence["checks"][0]["metric"] == "error_rate"


def test_other_routers_only_roll_back() -> None:
    definition = {"strategy": "weighted", "guardrails": {"error_rate": 0.05}}
    fine = {"a": arm(correct=900, labelled=1000), "b": arm(correct=990, labelled=1000)}
    verdict, status = evaluate(definition, "a", fine)
    assert verdict.action is None and not status["breached"]
    verdict, _ = evaluate(definition, "a", {**fine, "b": arm(served=800, errors=200)})
    assert verdict.action == "rollback" and verdict.model == "a"
