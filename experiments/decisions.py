"""Guardrails, canary promotion and the canary ramp as plain Python: numbers in, a decision out.

Nothing here reads a database or a clock: the serving layer (``serving.guardian``) gathers each
arm's sufficient statistics, calls :func:`evaluate`, and applies what it returns. Every decision
about a rate or an accuracy difference uses the always-valid sequential bounds of
``experiments.stats`` (so it may be checked after every outcome without inflating the error
rate); the latency guardrail is a p95 against a limit, judged only once an arm has
``min_samples`` latencies.

Guardrails protect against the arms under test, so they are checked on every non-control arm:
rolling back sends traffic to the control, which would not help if the control itself breached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from experiments.stats import RatioStats, compare, rate_exceeds, sequential_bound

#: The guardrail limits a definition may set (``experiments.spec.GUARDRAIL_LIMITS``).
GUARDRAIL_METRICS: tuple[str, ...] = (
    "latency_p95_ms",
    "error_rate",
    "fallback_rate",
    "accuracy_drop",
)
DEFAULT_MIN_SAMPLES = 100
DEFAULT_TUNING = 5000
ALPHA = 0.05


@dataclass(frozen=True)
class ArmInputs:
    """One arm's numbers a decision needs, gathered by the serving layer."""

    served: int = 0
    errors: int = 0
    fallbacks: int = 0
    latency_p95_ms: float | None = None
    latency_samples: int = 0
    accuracy: RatioStats = field(default_factory=lambda: RatioStats.proportion(0, 0))

    @property
    def requests(self) -> int:
        """Every routed request, failed ones included: the error rate's denominator."""
        return self.served + self.errors

    @property
    def labelled(self) -> int:
        """Labelled outcomes behind the accuracy (the ratio metric's denominator sum)."""
        return int(round(self.accuracy.d_sum))


@dataclass(frozen=True)
class Verdict:
    """What to do now: ``action`` is promote, rollback, step, inconclusive or None (keep going)."""

    action: str | None
    model: str | None = None
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    percentage: float | None = None  # the new canary share for ``step``


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _check(
    arm: str, metric: str, limit: float, observed: Any, bound: Any, breached: bool, samples: int
) -> dict[str, Any]:
    return {
        "arm": arm,
        "metric": metric,
        "limit": limit,
        "observed": _finite(observed),
        "bound": _finite(bound),
        "samples": samples,
        "breached": bool(breached),
    }


def guardrail_checks(
    limits: Mapping[str, Any],
    arms: Mapping[str, ArmInputs],
    control: str,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    tuning: int = DEFAULT_TUNING,
) -> dict[str, Any]:
    """Every set guardrail on every non-control arm: ``{"limits", "breached", "checks"}``.

    * ``latency_p95_ms``: breached when the arm has ``min_samples`` latencies and its p95 is
      above the limit (``bound`` is None: a p95 has no sequential bound here).
    * ``error_rate`` / ``fallback_rate``: breached when the one-sided always-valid lower bound of
      the rate is above the limit (``rate_exceeds``), never on a noisy point estimate.
    * ``accuracy_drop``: breached when the always-valid upper bound of arm minus control is below
      ``-limit``: the arm is worse than the control by more than the limit, with confidence.
    """
    set_limits = {
        k: float(v) for k, v in limits.items() if k in GUARDRAIL_METRICS and v is not None
    }
    checks: list[dict[str, Any]] = []
    baseline = arms.get(control)
    for arm, numbers in arms.items():
        if arm == control:
            continue
        if "latency_p95_ms" in set_limits:
            limit = set_limits["latency_p95_ms"]
            p95 = numbers.latency_p95_ms
            enough = numbers.latency_samples >= min_samples
            checks.append(
                _check(
                    arm,
                    "latency_p95_ms",
                    limit,
                    p95,
                    None,
                    enough and p95 is not None and p95 > limit,
                    numbers.latency_samples,
                )
            )
        for metric, events, trials in (
            ("error_rate", numbers.errors, numbers.requests),
            ("fallback_rate", numbers.fallbacks, numbers.served),
        ):
            if metric not in set_limits:
                continue
            limit = set_limits[metric]
            test = rate_exceeds(events, trials, limit, alpha=ALPHA, tuning=tuning)
            checks.append(
                _check(arm, metric, limit, test["rate"], test["lower"], test["breached"], trials)
            )
        if "accuracy_drop" in set_limits and baseline is not None:
            limit = set_limits["accuracy_drop"]
            diff, upper = _difference_upper(baseline.accuracy, numbers.accuracy, tuning)
            checks.append(
                _check(
                    arm,
                    "accuracy_drop",
                    limit,
                    None if diff is None else -diff,
                    None if upper is None else -upper,
                    upper is not None and upper < -limit,
                    numbers.labelled,
                )
            )
    return {
        "limits": set_limits,
        "min_samples": int(min_samples),
        "breached": any(c["breached"] for c in checks),
        "checks": checks,
    }


def _difference_upper(
    control: RatioStats, treatment: RatioStats, tuning: int
) -> tuple[float | None, float | None]:
    """Treatment minus control and its one-sided always-valid upper bound."""
    absolute = compare(control, treatment, tuning=tuning)["absolute"]
    diff, se = absolute["difference"], absolute["se"]
    if diff is None or se is None:
        return diff, None
    _, upper = sequential_bound(
        diff, se, control.n + treatment.n, alpha=ALPHA, tuning=tuning, side="upper"
    )
    return diff, upper


def breach_reason(checks: list[dict[str, Any]]) -> str:
    """One line naming every breached guardrail with its numbers, for the event and the log."""
    parts = []
    for c in checks:
        if not c["breached"]:
            continue
        if c["metric"] == "latency_p95_ms":
            parts.append(
                f"{c['arm']} latency p95 {c['observed']:.1f} ms > {c['limit']:g} ms "
                f"over {c['samples']} requests"
            )
        elif c["metric"] == "accuracy_drop":
            parts.append(
                f"{c['arm']} accuracy below the control by {100 * c['observed']:.1f} points "
                f"(at least {100 * c['bound']:.1f} with 95% confidence) > "
                f"{100 * c['limit']:g} allowed, over {c['samples']} labels"
            )
        else:
            parts.append(
                f"{c['arm']} {c['metric'].replace('_', ' ')} {c['observed']:.3f} "
                f"(at least {c['bound']:.3f} with 95% confidence) > {c['limit']:g} "
                f"over {c['samples']} requests"
            )
    return "guardrail breached: " + "; ".join(parts)


def canary_verdict(
    definition: Mapping[str, Any],
    percentage: float,
    baseline: ArmInputs,
    canary: ArmInputs,
    *,
    tuning: int = DEFAULT_TUNING,
) -> Verdict:
    """Promote, roll back, step the ramp, stop as inconclusive, or keep going (action None).

    * promote: the canary has ``min_samples`` labelled outcomes, its observed improvement over
      the baseline reaches ``min_improvement``, and the always-valid interval excludes a loss;
    * rollback: the always-valid interval lies below zero (the canary is worse);
    * inconclusive: neither by ``max_samples`` labelled canary outcomes (when set);
    * step: otherwise, one ``step_percentage`` up (to ``max_percentage``) each time the canary
      has gathered another equal share of ``min_samples``, so it reaches its full share by the
      time promotion can be judged.
    """
    criteria = definition.get("promotion_criteria") or {}
    min_samples = int(criteria.get("min_samples") or 1000)
    min_improvement = float(criteria.get("min_improvement") or 0.0)
    max_samples = criteria.get("max_samples")
    result = compare(baseline.accuracy, canary.accuracy, tuning=tuning)
    absolute, sequential = result["absolute"], result["sequential"]
    diff, low, high = absolute["difference"], sequential["ci_low"], sequential["ci_high"]
    labelled = canary.labelled
    evidence = {
        "canary_labelled": labelled,
        "baseline_labelled": baseline.labelled,
        "difference": diff,
        "sequential_ci_low": low,
        "sequential_ci_high": high,
        "sequential_p_value": sequential["p_value"],
        "min_samples": min_samples,
        "min_improvement": min_improvement,
    }
    baseline_name, canary_name = definition["baseline_model"], definition["canary_model"]
    if high is not None and high < 0:
        return Verdict(
            "rollback",
            baseline_name,
            f"canary {canary_name} is worse than {baseline_name}: "
            f"{_points(diff)} points, always-valid 95% interval [{_points(low)}, {_points(high)}]",
            evidence,
        )
    if (
        labelled >= min_samples
        and diff is not None
        and diff >= min_improvement
        and low is not None
        and low > 0
    ):
        return Verdict(
            "promote",
            canary_name,
            f"canary {canary_name} beats {baseline_name} by {_points(diff)} points "
            f"(>= {_points(min_improvement)} required) over {labelled} labels; always-valid "
            f"95% interval [{_points(low)}, {_points(high)}] excludes a loss",
            evidence,
        )
    if max_samples is not None and labelled >= int(max_samples):
        return Verdict(
            "inconclusive",
            baseline_name,
            f"no decision after {labelled} labelled canary outcomes (max_samples "
            f"{int(max_samples)}): {_points(diff)} points, interval [{_points(low)}, "
            f"{_points(high)}]",
            evidence,
        )
    step = ramp_target(definition, percentage, labelled, min_samples)
    if step is not None:
        return Verdict(
            "step",
            canary_name,
            f"canary {canary_name} ramped from {percentage:g}% to {step:g}% after {labelled} "
            "labels with no loss and no guardrail breach",
            evidence,
            percentage=step,
        )
    return Verdict(None, evidence=evidence)


def ramp_target(
    definition: Mapping[str, Any], percentage: float, labelled: int, min_samples: int
) -> float | None:
    """The next ramp percentage when the canary has earned it, else None.

    The ramp from ``canary_percentage`` at creation to ``max_percentage`` has k steps; step i
    (1-based) is due once the canary has ``i * min_samples / (k + 1)`` labelled outcomes.
    """
    step = definition.get("step_percentage")
    maximum = float(definition.get("max_percentage") or 100.0)
    start = float(definition.get("initial_canary_percentage", definition["canary_percentage"]))
    if not step or percentage >= maximum:
        return None
    steps = max(1, math.ceil((maximum - start) / float(step) - 1e-9))
    done = max(0, round((percentage - start) / float(step)))
    if labelled < (done + 1) * min_samples / (steps + 1):
        return None
    return min(maximum, start + (done + 1) * float(step), max(percentage, start) + float(step))


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def evaluate(
    definition: Mapping[str, Any],
    control: str,
    arms: Mapping[str, ArmInputs],
    *,
    canary_percentage: float | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """The decision for a running experiment now, and its guardrail status.

    A guardrail breach rolls back whatever the primary metric says; a canary is then judged by
    its promotion criteria; other routers only ever roll back (they end by a person's decision).
    """
    guardrails = definition.get("guardrails") or {}
    tuning = int(definition.get("sequential_tuning") or DEFAULT_TUNING)
    status = guardrail_checks(
        guardrails,
        arms,
        control,
        min_samples=int(guardrails.get("min_samples") or DEFAULT_MIN_SAMPLES),
        tuning=tuning,
    )
    if status["breached"]:
        breached = [c for c in status["checks"] if c["breached"]]
        return (
            Verdict("rollback", control, breach_reason(status["checks"]), {"checks": breached}),
            status,
        )
    if definition.get("strategy") == "canary":
        baseline = arms.get(definition["baseline_model"], ArmInputs())
        canary = arms.get(definition["canary_model"], ArmInputs())
        percentage = float(
            definition["canary_percentage"] if canary_percentage is None else canary_percentage
        )
        return canary_verdict(definition, percentage, baseline, canary, tuning=tuning), status
    return Verdict(None), status
