"""Statistics behind the admin page and ``/api/v1/experiments/ab/results``.

Pure functions over counts and lists. Conventions used throughout:

* arm 1 is Bagging (the control) and arm 2 is Boosting, so every difference is ``p2 - p1`` =
  Boosting minus Bagging, and a positive number means Boosting was more accurate;
* everything returned is plain JSON-serialisable Python (``int``, ``float``, ``bool``, ``None``);
  an undefined quantity is ``None``, never NaN or infinity.

The first release's functions (``two_proportion_test``, ``prob_b_better``, ``srm_test``, ...)
need no scipy: normal tail probabilities use ``math.erfc`` (accurate far into the tails, unlike
``1 - cdf``), quantiles use ``statistics.NormalDist().inv_cdf``, and the Bayesian comparison is
integrated numerically with numpy.

The N-arm experiment statistics further down (``RatioStats``, ``compare``, ``compare_all``, the
``sequential_*`` functions, ``rate_exceeds``, ``srm``, ``sample_size``) reproduce GrowthBook's stats
engine, gbstats (``packages/stats/gbstats`` in github.com/growthbook/growthbook): the same
sufficient statistics, delta-method variances, Welch t tests, asymptotic confidence sequences,
Gaussian Bayesian chance to win and chi-square SRM check, using ``scipy.stats`` for the t, normal
and chi-square distributions (scipy is pinned in requirements.txt).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

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


# ---------------------------------------------------------------------------------------------
# N-arm experiment statistics, as GrowthBook's stats engine (gbstats) computes them.
#
# Sources, all under packages/stats/gbstats/ in github.com/growthbook/growthbook:
#   models/statistics.py  RatioStatistic, SampleMeanStatistic, ProportionStatistic,
#                         compute_covariance
#   utils.py              variance_of_ratios, frequentist_variance, frequentist_diff, check_srm
#   models/tests.py       EffectMoments (zero-variance and zero-baseline guards)
#   frequentist/tests.py  TwoSidedTTest (Welch-Satterthwaite dof), sequential_rho,
#                         sequential_interval_halfwidth(_one_sided), SequentialTwoSidedTTest
#   bayesian/tests.py     EffectBayesianABTest, GaussianPrior
# ---------------------------------------------------------------------------------------------


def _clean(value: Any) -> float | None:
    """A finite Python float or None, so no NaN/inf/numpy scalar ever reaches JSON."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class RatioStats:
    """Sufficient statistics of a ratio metric over randomisation units (gbstats RatioStatistic).

    With sticky assignment the unit is the client, not the request: ``m`` is a unit's correct
    outcomes and ``d`` its labelled outcomes, and the accuracy is ``m_sum / d_sum``. Its variance
    is the delta-method one of ``gbstats/models/statistics.py`` RatioStatistic with sample-mean
    (n - 1) moments for numerator and denominator, so clustered requests are not counted as
    independent evidence. When every unit is a single 0/1 trial (``d = 1``, ``m`` binary, as
    ``proportion`` builds) the data *is* a binomial metric, which gbstats analyses with
    ProportionStatistic, variance ``p (1 - p)``; that case uses that variance.
    """

    n: int
    m_sum: float
    m_sum_squares: float
    d_sum: float
    d_sum_squares: float
    m_d_sum_of_products: float

    @classmethod
    def proportion(cls, successes: int, trials: int) -> RatioStats:
        """Every trial its own unit (x in {0, 1}, d = 1): a binomial metric on raw counts."""
        _check_counts(successes, trials)
        return cls(
            n=int(trials),
            m_sum=float(successes),
            m_sum_squares=float(successes),
            d_sum=float(trials),
            d_sum_squares=float(trials),
            m_d_sum_of_products=float(successes),
        )

    @classmethod
    def from_units(cls, numerators: Iterable[float], denominators: Iterable[float]) -> RatioStats:
        """Aggregate per-unit (numerator, denominator) pairs, e.g. correct/labelled per client."""
        m = np.asarray(list(numerators), dtype=float)
        d = np.asarray(list(denominators), dtype=float)
        if m.shape != d.shape or m.ndim != 1:
            raise ValueError("numerators and denominators must be 1-d and of equal length")
        return cls(
            n=int(m.size),
            m_sum=float(m.sum()),
            m_sum_squares=float(np.dot(m, m)),
            d_sum=float(d.sum()),
            d_sum_squares=float(np.dot(d, d)),
            m_d_sum_of_products=float(np.dot(m, d)),
        )

    @property
    def is_proportion(self) -> bool:
        """True when every unit is one 0/1 trial, i.e. gbstats would use ProportionStatistic."""
        n = float(self.n)
        return (
            self.n > 0
            and self.d_sum == n
            and self.d_sum_squares == n
            and self.m_sum_squares == self.m_sum
            and self.m_d_sum_of_products == self.m_sum
        )

    @property
    def mean(self) -> float | None:
        """m_sum / d_sum, the pooled ratio (accuracy over labelled outcomes); None when d_sum=0."""
        if self.d_sum == 0:
            return None
        return _clean(self.m_sum / self.d_sum)

    @property
    def variance(self) -> float | None:
        """Per-unit delta-method variance of the ratio (gbstats), so Var(mean) = variance / n."""
        if self.n < 2 or self.d_sum == 0:
            return None
        n = float(self.n)
        if self.is_proportion:
            p = self.m_sum / n
            return _clean(p * (1.0 - p))
        mean_m = self.m_sum / n
        mean_d = self.d_sum / n
        var_m = (self.m_sum_squares - self.m_sum**2 / n) / (n - 1.0)
        var_d = (self.d_sum_squares - self.d_sum**2 / n) / (n - 1.0)
        cov_md = (self.m_d_sum_of_products - self.m_sum * self.d_sum / n) / (n - 1.0)
        # gbstats utils.variance_of_ratios
        variance = (
            var_m / mean_d**2 + var_d * mean_m**2 / mean_d**4 - 2.0 * cov_md * mean_m / mean_d**3
        )
        return _clean(variance)


@dataclass(frozen=True)
class GaussianPrior:
    """Prior on the relative lift for the Bayesian chance to win (gbstats GaussianPrior)."""

    mean: float = 0.0
    variance: float = 1.0
    proper: bool = False


def _welch_dof(var_c: float, n_c: int, var_t: float, n_t: int) -> float | None:
    """Welch-Satterthwaite degrees of freedom from per-unit variances, as gbstats TTest.dof."""
    numerator = (var_t / n_t + var_c / n_c) ** 2
    denominator = var_t**2 / (n_t**2 * (n_t - 1)) + var_c**2 / (n_c**2 * (n_c - 1))
    if denominator <= 0:
        return None
    return numerator / denominator


def _t_test(estimate: float, se: float, dof: float, alpha: float) -> dict[str, float | None]:
    """Two-sided Welch t p-value and (1 - alpha) interval (gbstats TwoSidedTTest)."""
    t_stat = estimate / se
    # 2 * sf rather than gbstats' 2 * (1 - cdf): identical, but keeps precision in the tail.
    p_value = 2.0 * float(_scipy_stats.t.sf(abs(t_stat), dof))
    halfwidth = float(_scipy_stats.t.ppf(1.0 - alpha / 2.0, dof)) * se
    return {
        "se": _clean(se),
        "ci_low": _clean(estimate - halfwidth),
        "ci_high": _clean(estimate + halfwidth),
        "p_value": _clean(min(1.0, p_value)),
    }


def _check_alpha(alpha: float) -> None:
    """Reject alphas outside (0, 1) instead of returning a meaningless interval."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_tuning(tuning: float) -> None:
    """N* must be positive: it sets the sample size where the confidence sequence is tightest."""
    if not tuning > 0:
        raise ValueError(f"tuning (N*) must be positive, got {tuning!r}")


def _empty_comparison() -> dict[str, Any]:
    """The comparison shape with every number None, for arms that cannot be compared yet."""
    return {
        "absolute": {
            "difference": None,
            "se": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
        },
        "relative": {"lift": None, "se": None, "ci_low": None, "ci_high": None, "p_value": None},
        "chance_to_win": None,
        "sequential": {"ci_low": None, "ci_high": None, "p_value": None},
    }


def compare(
    control: RatioStats,
    treatment: RatioStats,
    *,
    alpha: float = 0.05,
    tuning: int = 5000,
    prior: GaussianPrior | None = None,
) -> dict:
    """One arm against the control, as gbstats reports it: absolute and relative effects with
    Welch t tests, Bayesian chance to win on the relative lift, always-valid sequential interval.

    * absolute: ``mean_t - mean_c`` with variance ``var_t/n_t + var_c/n_c``
      (gbstats ``utils.frequentist_variance``, relative=False);
    * relative: ``(mean_t - mean_c) / |mean_c|`` with the delta-method variance
      ``variance_of_ratios(mean_t, var_t/n_t, mean_c, var_c/n_c, 0)``;
    * both use the Welch-Satterthwaite dof of ``frequentist/tests.py`` TTest.dof;
    * ``chance_to_win``: ``EffectBayesianABTest`` on the relative lift: P(lift > 0) under a flat
      prior (Normal(lift, se)) or the posterior of a proper Gaussian ``prior``;
    * ``sequential``: ``SequentialTwoSidedTTest`` on the absolute difference with
      ``n = n_c + n_t`` and ``s2 = se^2 * n``; the p-value is gbstats' e-value-based one.

    Every number is None, as gbstats returns its default output, when either arm has fewer than
    two units, no denominator, zero variance, or the control mean is 0.
    """
    _check_alpha(alpha)
    _check_tuning(tuning)
    result = _empty_comparison()
    mean_c, mean_t = control.mean, treatment.mean
    var_c, var_t = control.variance, treatment.variance
    if (
        mean_c is None
        or mean_t is None
        or var_c is None
        or var_t is None
        or var_c <= 0.0
        or var_t <= 0.0
        or mean_c == 0.0
    ):
        return result
    n_c, n_t = control.n, treatment.n
    dof = _welch_dof(var_c, n_c, var_t, n_t)
    if dof is None:
        return result

    difference = mean_t - mean_c
    var_abs = var_t / n_t + var_c / n_c
    se_abs = math.sqrt(var_abs)
    absolute = _t_test(difference, se_abs, dof, alpha)
    result["absolute"] = {"difference": _clean(difference), **absolute}

    lift = difference / abs(mean_c)
    # gbstats utils.variance_of_ratios(mean_t, var_t / n_t, mean_c, var_c / n_c, 0)
    var_rel = (var_t / n_t) / mean_c**2 + (var_c / n_c) * mean_t**2 / mean_c**4
    se_rel = math.sqrt(var_rel)
    result["relative"] = {"lift": _clean(lift), **_t_test(lift, se_rel, dof, alpha)}

    result["chance_to_win"] = _chance_to_win(lift, var_rel, prior)

    n_total = n_c + n_t
    low, high = sequential_bound(difference, se_abs, n_total, alpha=alpha, tuning=tuning)
    result["sequential"] = {
        "ci_low": low,
        "ci_high": high,
        "p_value": sequential_p_value(difference, se_abs, n_total, tuning=tuning, alpha=alpha),
    }
    return result


def _chance_to_win(lift: float, variance: float, prior: GaussianPrior | None) -> float | None:
    """P(relative lift > 0) from gbstats EffectBayesianABTest.compute_result and chance_to_win."""
    if prior is None:
        prior = GaussianPrior()
    if prior.proper and not prior.variance > 0:
        raise ValueError(f"a proper prior needs a positive variance, got {prior.variance!r}")
    if variance <= 0:
        return None
    if prior.proper:
        precision = 1.0 / variance + 1.0 / prior.variance
        mean = (lift / variance + prior.mean / prior.variance) / precision
    else:
        precision = 1.0 / variance
        mean = lift
    return _clean(_scipy_stats.norm.sf(0.0, loc=mean, scale=math.sqrt(1.0 / precision)))


def compare_all(arms: Mapping[str, RatioStats], control: str, **kwargs: Any) -> dict:
    """Every non-control arm against the one control, flagging when several arms share it."""
    if control not in arms:
        raise ValueError(f"control arm {control!r} not among {sorted(arms)}")
    comparisons = {
        name: compare(arms[control], stats, **kwargs)
        for name, stats in arms.items()
        if name != control
    }
    return {"comparisons": comparisons, "multiple_comparisons": len(comparisons) > 1}


def sequential_rho(alpha: float, tuning: float, *, two_sided: bool = True) -> float:
    """gbstats frequentist/tests.py sequential_rho: the mixture width that makes the confidence
    sequence tightest at ``tuning`` (N*) units (eq. 161, Waudby-Smith et al., arXiv:2103.06476)."""
    _check_alpha(alpha)
    _check_tuning(tuning)
    alpha_arg = alpha if two_sided else 2.0 * alpha
    log_term = -2.0 * math.log(alpha_arg)
    return math.sqrt((log_term + math.log(log_term + 1.0)) / tuning)


def sequential_halfwidth(
    variance: float | np.ndarray,
    n: int | np.ndarray,
    *,
    alpha: float = 0.05,
    tuning: int = 5000,
) -> float | np.ndarray:
    """gbstats sequential_interval_halfwidth: variance = per-unit variance s2 of the estimate
    (Var(est) * n), n = units. Accepts numpy arrays (element-wise) so benchmarks use this formula.

    Two-sided asymptotic confidence sequence, eq. 9 of Waudby-Smith et al. 2023:
    ``sqrt(s2) * sqrt(2 (n rho^2 + 1) log(sqrt(n rho^2 + 1) / alpha) / (n rho)^2)``.
    """
    rho = sequential_rho(alpha, tuning, two_sided=True)
    s2 = np.asarray(variance, dtype=float)
    units = np.asarray(n, dtype=float)
    nr2p1 = units * rho**2 + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        halfwidth = np.sqrt(s2) * np.sqrt(
            2.0 * nr2p1 * np.log(np.sqrt(nr2p1) / alpha) / (units * rho) ** 2
        )
    if halfwidth.ndim == 0:
        return float(halfwidth)
    return halfwidth


def _sequential_halfwidth_one_sided(s2: float, n: float, alpha: float, tuning: float) -> float:
    """gbstats sequential_interval_halfwidth_one_sided (eq. 134), rho from the one-sided alpha."""
    rho = sequential_rho(alpha, tuning, two_sided=False)
    nr2p1 = n * rho**2 + 1.0
    log_term = math.log(1.0 + math.sqrt(nr2p1) / (2.0 * alpha))
    return math.sqrt(s2 * 2.0 * nr2p1 / (n * rho) ** 2 * log_term)


def _defined(estimate: float | None, se: float | None, n: int | None) -> bool:
    """A sequential bound needs a finite estimate, a positive finite se and at least one unit."""
    if estimate is None or se is None or n is None or n < 1:
        return False
    return math.isfinite(estimate) and math.isfinite(se) and se > 0.0


def sequential_bound(
    estimate: float,
    se: float,
    n: int,
    *,
    alpha: float = 0.05,
    tuning: int = 5000,
    side: str = "two",
) -> tuple[float | None, float | None]:
    """Always-valid interval for an estimate with standard error se from n units; side "two",
    "lower" (returns (low, None)) or "upper" ((None, high)); one-sided uses the one-sided alpha
    the way gbstats' SequentialOneSidedTreatment{Greater,Lesser}TTest do."""
    if side not in ("two", "lower", "upper"):
        raise ValueError(f"side must be 'two', 'lower' or 'upper', got {side!r}")
    _check_alpha(alpha)
    _check_tuning(tuning)
    if side != "two" and alpha >= 0.5:
        # gbstats: ALPHA_GREATER_THAN_0.5_FOR_SEQUENTIAL_ONE_SIDED_TEST
        raise ValueError(f"one-sided sequential tests need alpha < 0.5, got {alpha!r}")
    if not _defined(estimate, se, n):
        return None, None
    s2 = se * se * n
    if side == "two":
        halfwidth = float(sequential_halfwidth(s2, n, alpha=alpha, tuning=tuning))
        return _clean(estimate - halfwidth), _clean(estimate + halfwidth)
    halfwidth = _sequential_halfwidth_one_sided(s2, float(n), alpha, float(tuning))
    if side == "lower":
        return _clean(estimate - halfwidth), None
    return None, _clean(estimate + halfwidth)


def sequential_p_value(
    estimate: float,
    se: float,
    n: int,
    *,
    tuning: int = 5000,
    null: float = 0.0,
    alpha: float = 0.05,
) -> float | None:
    """Smallest alpha at which the always-valid interval excludes ``null`` (1.0 when it never does).

    gbstats SequentialTwoSidedTTest.p_value (eq. 155 of arXiv:2103.06476): ``min(1, 1/E)`` with
    the e-value ``E = exp(rho^2 S / (2 (n rho^2 + 1))) / sqrt(n rho^2 + 1)`` and
    ``S = (estimate - null)^2 n / se^2``.
    rho is tuned at ``alpha`` (the experiment's alpha, 0.05 by default) exactly as gbstats does,
    so ``p < alpha`` exactly when ``sequential_bound(..., alpha=alpha)`` excludes ``null``.
    Computed in logs so a huge statistic gives 0.0 rather than overflowing.
    """
    if not _defined(estimate, se, n):
        return None
    rho = sequential_rho(alpha, tuning, two_sided=True)
    statistic = (estimate - null) ** 2 * n / se**2
    nr2p1 = n * rho**2 + 1.0
    log_p = 0.5 * math.log(nr2p1) - rho**2 * statistic / (2.0 * nr2p1)
    return _clean(math.exp(min(0.0, log_p)))


def rate_exceeds(
    events: int, trials: int, limit: float, *, alpha: float = 0.05, tuning: int = 5000
) -> dict:
    """One-sided always-valid test that a rate (error or fallback rate) is above ``limit``, so a
    guardrail fires on evidence, not on a noisy point estimate: {"rate", "lower", "breached"}.

    ``lower`` is the one-sided sequential lower bound (gbstats one-sided confidence sequence,
    alpha one-sided) of the rate; ``breached`` is ``lower > limit``. The per-trial variance is
    ``max(rate (1 - rate), limit (1 - limit))``: the Wald variance, floored at its value on the
    null boundary so that a run of all-failures (rate 1, Wald variance 0) or a lucky streak of
    none cannot produce a zero-width interval; at the boundary this is the score test. A limit
    of 0 is breached by any event (impossible under the limit); a limit of 1 never is.
    """
    _check_counts(events, trials)
    if not 0.0 <= limit <= 1.0:
        raise ValueError(f"limit must be in [0, 1], got {limit!r}")
    if trials == 0:
        return {"rate": None, "lower": None, "breached": False}
    rate = events / trials
    variance = max(rate * (1.0 - rate), limit * (1.0 - limit))
    if variance <= 0.0:
        # limit 0 or 1 and the rate 0 or 1: no uncertainty left to account for; any event
        # breaches a zero limit and nothing can exceed a limit of 1.
        return {"rate": rate, "lower": rate, "breached": rate > limit}
    lower, _ = sequential_bound(
        rate, math.sqrt(variance / trials), trials, alpha=alpha, tuning=tuning, side="lower"
    )
    if limit == 0.0:
        # Under "rate <= 0" a single event is impossible, so it is proof of a breach by itself.
        return {"rate": rate, "lower": lower, "breached": events > 0}
    return {"rate": rate, "lower": lower, "breached": lower is not None and lower > limit}


def srm(
    observed: Mapping[str, int], expected: Mapping[str, float], alpha: float = SRM_ALPHA
) -> dict:
    """Sample-ratio mismatch for N arms: Pearson chi-square goodness of fit of observed units
    against the expected shares (gbstats utils.check_srm), ``detected`` when p < alpha (0.001).

    Expected shares are normalised by their sum; an arm missing from ``expected`` has share 0 and
    one missing from ``observed`` has 0 units. Units in an arm with expected share 0 cannot happen
    under the design: p 0.0, detected (gbstats silently skips such arms). The degrees of freedom
    are the arms with a positive share minus one (gbstats uses all arms minus one, which only
    differs when some arm has share 0). Fewer than two arms with a positive share, or no traffic:
    chi2 and p None, not detected (gbstats returns p = 1 for no traffic).
    """
    _check_alpha(alpha)
    names = list(dict.fromkeys([*expected, *observed]))
    counts = {name: int(observed.get(name, 0)) for name in names}
    shares = {name: float(expected.get(name, 0.0)) for name in names}
    if any(c < 0 for c in counts.values()):
        raise ValueError(f"observed counts must be non-negative, got {dict(observed)!r}")
    if any(not (math.isfinite(s) and s >= 0.0) for s in shares.values()):
        raise ValueError(f"expected shares must be finite and non-negative, got {dict(expected)!r}")
    if any(counts[name] > 0 and shares[name] == 0.0 for name in names):
        return {"chi2": None, "p_value": 0.0, "detected": True}
    active = [name for name in names if shares[name] > 0.0]
    total = sum(counts[name] for name in active)
    if len(active) < 2 or total == 0:
        return {"chi2": None, "p_value": None, "detected": False}
    total_share = math.fsum(shares[name] for name in active)
    chi2 = 0.0
    for name in active:
        e = shares[name] / total_share * total
        chi2 += (counts[name] - e) ** 2 / e
    p_value = float(_scipy_stats.chi2.sf(chi2, len(active) - 1))
    return {"chi2": _clean(chi2), "p_value": _clean(p_value), "detected": p_value < alpha}


def sample_size(p_base: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Labelled units per arm for a two-sided test to detect an absolute accuracy change ``mde``
    (Fleiss two-proportion formula; see ``required_sample_size``)."""
    return required_sample_size(p_base, mde, alpha=alpha, power=power)
