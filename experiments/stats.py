"""Statistics behind the admin page and ``/api/v1/experiments/ab/results``.

Pure functions over counts and lists. Conventions used throughout:

* arm 1 is Bagging (the control) and arm 2 is Boosting, so every difference is ``p2 - p1`` =
  Boosting minus Bagging, and a positive number means Boosting was more accurate;
* everything returned is plain JSON-serialisable Python (``int``, ``float``, ``bool``, ``None``);
  an undefined quantity is ``None``, never NaN or infinity.

scipy is not a dependency: normal tail probabilities use ``math.erfc`` (accurate far into the
tails, unlike ``1 - cdf``), quantiles use ``statistics.NormalDist().inv_cdf``, and the Bayesian
comparison is integrated numerically with numpy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from experiments.assignment import ARMS

log = logging.getLogger(__name__)

Z_95 = 1.959963984540054
"""Two-sided 95% normal quantile, z_{0.975}."""

SRM_ALPHA = 0.001
"""Sample-ratio-mismatch threshold: the conventional 0.001, since the check runs continuously."""

_STANDARD_NORMAL = NormalDist()
_MAX_GRID_POINTS = 2_000_000


def _check_counts(successes: int, n: int) -> None:
    """Fail loudly on impossible counts instead of returning a plausible-looking number."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def _normal_two_sided_p(z: float) -> float:
    """Two-sided normal p-value via erfc, which keeps precision where 1 - cdf would round to 0."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF, for sample sizes and critical values."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p!r}")
    return _STANDARD_NORMAL.inv_cdf(p)


def wilson_interval(
    successes: int, n: int, z: float = Z_95
) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval for a proportion; unlike Wald it stays inside [0, 1] at 0/n and n/n."""
    _check_counts(successes, n)
    if n == 0:
        return None, None
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = (z / denominator) * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> dict[str, float | None]:
    """Compare two proportions (arm 1 = Bagging, arm 2 = Boosting); ``difference`` is p2 - p1.

    Returns ``{"difference", "ci_low", "ci_high", "z", "p_value"}``:

    * ``ci_low``/``ci_high``: 95% Newcombe hybrid-score interval (Newcombe 1998, method 10) for
      p2 - p1, built from the two Wilson intervals; it behaves at 0% and 100% where Wald does not.
    * ``z``/``p_value``: pooled two-sided z-test, the test named in the HTTP contract.

    Everything is ``None`` while either arm has n = 0. When the pooled variance is 0 (both arms
    all wrong or both all right) the observed proportions are identical, so ``z`` is 0.0 and
    ``p_value`` is 1.0: no evidence of a difference, and no division by zero.
    """
    _check_counts(x1, n1)
    _check_counts(x2, n2)
    if n1 == 0 or n2 == 0:
        return {"difference": None, "ci_low": None, "ci_high": None, "z": None, "p_value": None}
    p1, p2 = x1 / n1, x2 / n2
    difference = p2 - p1
    l1, u1 = wilson_interval(x1, n1)
    l2, u2 = wilson_interval(x2, n2)
    assert l1 is not None and u1 is not None and l2 is not None and u2 is not None
    ci_low = difference - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    ci_high = difference + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)

    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = difference / math.sqrt(variance)
        p_value = _normal_two_sided_p(z)
    return {
        "difference": difference,
        "ci_low": max(-1.0, ci_low),
        "ci_high": min(1.0, ci_high),
        "z": z,
        "p_value": p_value,
    }


def _logit_beta_log_density(y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Unnormalised log density of logit(X) for X ~ Beta(a, b): a*log(s) + b*log(1 - s)."""
    # log(sigmoid(y)) = -log(1 + e^-y) and log(1 - sigmoid(y)) = -log(1 + e^y), overflow-free.
    return -a * np.logaddexp(0.0, -y) - b * np.logaddexp(0.0, y)


def prob_b_better(
    x1: int, n1: int, x2: int, n2: int, prior: tuple[float, float] = (1.0, 1.0)
) -> float:
    """P(p2 > p1) under independent Beta posteriors: "how likely is Boosting really better".

    Posterior of arm i is Beta(prior_a + x_i, prior_b + n_i - x_i). The probability is integrated
    on a grid in logit space, where a Beta density becomes smooth, log-concave and exponentially
    decaying at both ends for every a, b > 0 (no endpoint singularity even for a Jeffreys prior).
    Each posterior is discretised into normalised grid masses and P = sum_k m2_k * (M1_{<k} +
    m1_k / 2), i.e. a trapezoid rule for the density of p2 - p1 above 0. The step is 1/100 of the
    narrower posterior's spread, which keeps the error far below 1e-4 (the tests check ~1e-6).
    """
    _check_counts(x1, n1)
    _check_counts(x2, n2)
    prior_a, prior_b = float(prior[0]), float(prior[1])
    if not (prior_a > 0.0 and prior_b > 0.0 and math.isfinite(prior_a + prior_b)):
        raise ValueError(f"prior parameters must be positive and finite, got {prior!r}")
    a1, b1 = prior_a + x1, prior_b + n1 - x1
    a2, b2 = prior_a + x2, prior_b + n2 - x2
    if a1 == a2 and b1 == b2:
        return 0.5

    # Logit of Beta(a, b): mode log(a/b), variance trigamma(a) + trigamma(b) < sum(1/t + 1/t^2).
    # Log-concave tails fall off at least exponentially in sd units, so +-40 sd loses < 1e-15.
    def window(a: float, b: float) -> tuple[float, float, float]:
        sd = math.sqrt(1.0 / a + 1.0 / a**2 + 1.0 / b + 1.0 / b**2)
        centre = math.log(a / b)
        return centre - 40.0 * sd, centre + 40.0 * sd, sd

    lo1, hi1, sd1 = window(a1, b1)
    lo2, hi2, sd2 = window(a2, b2)
    if hi1 <= lo2:
        return 1.0
    if hi2 <= lo1:
        return 0.0
    low, high = min(lo1, lo2), max(hi1, hi2)
    # The bound overstates the true spread by less than sqrt(2), so this is <= 1/70 of it.
    step = min(sd1, sd2) / 100.0
    points = math.ceil((high - low) / step) + 1
    if points > _MAX_GRID_POINTS:
        log.warning("prob_b_better grid capped at %d points (wanted %d)", _MAX_GRID_POINTS, points)
        points = _MAX_GRID_POINTS
    grid = np.linspace(low, high, points)

    def masses(a: float, b: float) -> np.ndarray:
        log_density = _logit_beta_log_density(grid, a, b)
        weights = np.exp(log_density - log_density.max())
        return weights / weights.sum()

    m1 = masses(a1, b1)
    m2 = masses(a2, b2)
    below1 = np.cumsum(m1) - m1  # mass of arm 1 strictly left of each grid point
    probability = float(np.dot(m2, below1 + 0.5 * m1))
    return min(1.0, max(0.0, probability))


def srm_test(n1: int, n2: int, expected_share2: float = 0.5) -> dict[str, float | bool | None]:
    """Sample-ratio-mismatch check: do the arm counts match the configured split?

    Pearson chi-square with 1 df (p-value = erfc(sqrt(chi2 / 2))); ``ok`` is ``p_value >= 0.001``.
    Returns ``{"chi2", "p_value", "ok"}``. With no traffic there is nothing to test: chi2 and
    p_value are ``None`` and ``ok`` is True. With a share of exactly 0 or 1 (an arm switched off),
    any traffic in the switched-off arm is impossible under the design: chi2 ``None`` (infinite),
    p_value 0.0, ``ok`` False; none gives chi2 0.0, p_value 1.0.
    """
    if n1 < 0 or n2 < 0:
        raise ValueError(f"counts must be non-negative, got n1={n1}, n2={n2}")
    share = float(expected_share2)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"expected_share2 must be in [0, 1], got {expected_share2!r}")
    total = n1 + n2
    if total == 0:
        return {"chi2": None, "p_value": None, "ok": True}
    if share in (0.0, 1.0):
        unexpected = n2 if share == 0.0 else n1
        if unexpected:
            return {"chi2": None, "p_value": 0.0, "ok": False}
        return {"chi2": 0.0, "p_value": 1.0, "ok": True}
    expected2 = total * share
    expected1 = total - expected2
    chi2 = (n1 - expected1) ** 2 / expected1 + (n2 - expected2) ** 2 / expected2
    p_value = math.erfc(math.sqrt(chi2 / 2.0))
    return {"chi2": chi2, "p_value": p_value, "ok": p_value >= SRM_ALPHA}


def required_sample_size(
    p_base: float, min_detectable_diff: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Per-arm n for a two-sided two-proportion z-test to detect an absolute accuracy change.

    Standard formula (Fleiss, no continuity correction), with p2 = p_base + mde, or p_base - mde
    when that would exceed 1:
    n = (z_{1-alpha/2} * sqrt(2 pbar qbar) + z_{power} * sqrt(p1 q1 + p2 q2))^2 / mde^2, rounded up.
    """
    if not 0.0 <= p_base <= 1.0:
        raise ValueError(f"p_base must be in [0, 1], got {p_base!r}")
    if not 0.0 < min_detectable_diff <= 1.0:
        raise ValueError(f"min_detectable_diff must be in (0, 1], got {min_detectable_diff!r}")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha!r}, {power!r}")
    p1 = p_base
    p2 = p_base + min_detectable_diff
    if p2 > 1.0:
        p2 = p_base - min_detectable_diff
        if p2 < 0.0:
            raise ValueError(
                f"min_detectable_diff {min_detectable_diff!r} is too large for p_base {p_base!r}"
            )
    z_alpha = normal_quantile(1.0 - alpha / 2.0)
    z_power = normal_quantile(power)
    p_bar = (p1 + p2) / 2.0
    numerator = (
        z_alpha * math.sqrt(2.0 * p_bar * (1.0 - p_bar))
        + z_power * math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2))
    ) ** 2
    # Guard the ceil against float noise such as 387.0000000001 for an exact 387.
    return max(1, math.ceil(round(numerator / min_detectable_diff**2, 9)))


def additional_samples_needed(
    n1: int,
    n2: int,
    p_base: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Labelled samples still needed per arm: max(0, required - min(n1, n2))."""
    if n1 < 0 or n2 < 0:
        raise ValueError(f"counts must be non-negative, got n1={n1}, n2={n2}")
    required = required_sample_size(p_base, mde, alpha=alpha, power=power)
    return max(0, required - min(n1, n2))


def percentile(values: Sequence[float], q: float) -> float | None:
    """q-th percentile (q in [0, 100]), linear like numpy's default, for latency p50/p95."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    if any(not math.isfinite(v) for v in ordered):
        raise ValueError("percentile values must be finite")
    position = (len(ordered) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def _finite(value: Any) -> float | None:
    """Return value as a float, or None when missing or NaN/inf, so bad rows never poison a mean."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def arm_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, int | float | None]:
    """Per-arm numbers of the results contract from prediction records.

    Each record has ``correct`` (True/False, or None while unlabelled), ``confidence``,
    ``latency_ms``, ``fallback`` and ``error``; missing keys read as None/False. ``errors`` counts
    failed requests (``error`` true); every other number describes successful predictions only:
    ``served`` counts them, ``labelled``/``correct``/``accuracy`` (Wilson ``ci_low``/``ci_high``)
    use the labelled ones, and mean confidence, latency p50/p95 and ``fallbacks`` use all of them.
    """
    served = errors = labelled = correct = fallbacks = 0
    confidences: list[float] = []
    latencies: list[float] = []
    for record in records:
        if record.get("error"):
            errors += 1
            continue
        served += 1
        if record.get("fallback"):
            fallbacks += 1
        outcome = record.get("correct")
        if outcome is not None:
            labelled += 1
            correct += bool(outcome)
        confidence = _finite(record.get("confidence"))
        if confidence is not None:
            confidences.append(confidence)
        latency = _finite(record.get("latency_ms"))
        if latency is not None:
            latencies.append(latency)
    ci_low, ci_high = wilson_interval(correct, labelled)
    return {
        "served": served,
        "labelled": labelled,
        "correct": correct,
        "accuracy": correct / labelled if labelled else None,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "mean_confidence": math.fsum(confidences) / len(confidences) if confidences else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "fallbacks": fallbacks,
        "errors": errors,
    }


def ab_results(
    records_by_arm: Mapping[str, Iterable[Mapping[str, Any]]],
    expected_share_boosting: float = 0.5,
    mde: float = 0.02,
) -> dict[str, Any]:
    """The body of ``GET /api/v1/experiments/ab/results``, computed from per-arm records.

    ``records_by_arm`` maps "bagging"/"boosting" to that arm's A/B records (a missing arm is
    empty; any other key is a ValueError, so other strategies cannot leak into the experiment).
    Accuracy statistics use labelled predictions; ``p_value``, the difference and
    ``prob_boosting_better`` are None while either arm has no labels, and
    ``samples_needed_per_arm`` (extra labelled samples per arm to detect ``mde`` at alpha 0.05,
    power 0.8, with Bagging's accuracy as the baseline) is None until Bagging has labels. The SRM
    check compares served counts with ``expected_share_boosting`` (``AB_SPLIT``); it uses served
    rather than assigned requests because errors that differ by arm are data loss SRM should flag.
    """
    unknown = set(records_by_arm) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; expected only {list(ARMS)}")
    bagging_name, boosting_name = ARMS
    arms = {name: arm_summary(records_by_arm.get(name, ())) for name in ARMS}
    bagging, boosting = arms[bagging_name], arms[boosting_name]

    srm = srm_test(
        int(bagging["served"] or 0), int(boosting["served"] or 0), expected_share_boosting
    )
    return {
        "arms": arms,
        **ab_comparison(bagging, boosting, mde),
        "srm_p_value": srm["p_value"],
        "srm_ok": srm["ok"],
    }


def ab_comparison(
    bagging: Mapping[str, Any], boosting: Mapping[str, Any], mde: float = 0.02
) -> dict[str, Any]:
    """The first release's Boosting-vs-Bagging keys from the two arms' summaries (``correct``,
    ``labelled``): difference and its interval, z-test, P(Boosting better), samples needed."""
    x1, n1 = int(bagging["correct"] or 0), int(bagging["labelled"] or 0)
    x2, n2 = int(boosting["correct"] or 0), int(boosting["labelled"] or 0)
    test = two_proportion_test(x1, n1, x2, n2)
    return {
        "difference": {
            "boosting_minus_bagging": test["difference"],
            "ci_low": test["ci_low"],
            "ci_high": test["ci_high"],
            "z": test["z"],
        },
        "p_value": test["p_value"],
        "prob_boosting_better": prob_b_better(x1, n1, x2, n2) if n1 > 0 and n2 > 0 else None,
        "samples_needed_per_arm": additional_samples_needed(n1, n2, x1 / n1, mde) if n1 else None,
        "mde": mde,
    }
