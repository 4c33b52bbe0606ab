"""The N-arm experiment statistics against gbstats and against independent computations.

Three kinds of reference, so a wrong formula cannot pass by agreeing with itself:

* **gbstats' own worked examples**, copied with their inputs and 5-decimal expected outputs from
  GrowthBook's ``packages/stats/tests/frequentist/test_tests.py`` and
  ``packages/stats/tests/bayesian/test_tests.py``;
* **gbstats itself**: ``GBSTATS_REFERENCE`` below holds what gbstats at growthbook commit
  8f1db4456915a8e7b7faf23d5632ca7219d2f469 returns (``TwoSidedTTest``, ``SequentialTwoSidedTTest``,
  ``SequentialOneSidedTreatment{Greater,Lesser}TTest``, ``EffectBayesianABTest``,
  ``check_srm``) for the same sufficient statistics, full precision. ``pip install gbstats`` is
  not a usable test dependency here: the only release on PyPI, 0.8.0, pins numpy < 2 and would
  replace requirements.txt's numpy 2.4.6 with 1.26.4 (``pip install --dry-run gbstats==0.8.0``).
  The numbers were produced by running that commit's ``packages/stats/gbstats`` source in a
  throwaway environment (numpy 2.4.6, scipy 1.17.1, pydantic, pandas), as the comment at the end
  of this file shows;
* **independent computations**: scipy (``ttest_ind``, ``ttest_ind_from_stats``, ``chisquare``,
  ``norm``, numerical integration), the delta method and a bootstrap on raw per-unit arrays with
  numpy, Monte Carlo for power and for always-valid coverage.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from experiments.stats import (
    GaussianPrior,
    RatioStats,
    compare,
    compare_all,
    rate_exceeds,
    required_sample_size,
    sample_size,
    sequential_bound,
    sequential_halfwidth,
    sequential_p_value,
    srm,
)

TIGHT = 1e-12

# What gbstats (growthbook 8f1db44, packages/stats/gbstats) returns for these inputs.
# "clustered": ratio metrics over units (RatioStatistic of two SampleMeanStatistic), 150 and 140
# clients with 1-29 labelled outcomes each; "proportion*": ProportionStatistic(sum, n).
GBSTATS_REFERENCE = {
    "clustered": {
        "control": {
            "n": 150,
            "m_sum": 1985.0,
            "m_sum_squares": 35047.0,
            "d_sum": 2192.0,
            "d_sum_squares": 42588.0,
            "m_d_sum_of_products": 38463.0,
        },
        "treatment": {
            "n": 140,
            "m_sum": 1971.0,
            "m_sum_squares": 37423.0,
            "d_sum": 2135.0,
            "d_sum_squares": 42911.0,
            "m_d_sum_of_products": 39868.0,
        },
        "control_variance": 0.009733525950266553,
        "treatment_variance": 0.011869700295125796,
        "ttest_absolute": {
            "expected": 0.017619318278944918,
            "ci": (-0.006463170524607563, 0.0417018070824974),
            "se": 0.012234122221818362,
            "p": 0.15093363234965307,
        },
        "ttest_relative": {
            "expected": 0.01945669806924295,
            "ci": (-0.00736271764211072, 0.04627611378059662),
            "se": 0.013624505855975137,
            "p": 0.15438672027680833,
        },
        "ttest_relative_alpha10": {"ci": (-0.003027980560946837, 0.041941376699432736)},
        "seq_absolute": {
            "ci": (-0.037378773790417354, 0.07261741034830718),
            "p": 0.8714746614911856,
        },
        "seq1000_absolute": {
            "ci": (-0.021659832183619103, 0.05689846874150894),
            "p": 0.8818331643381719,
        },
        "seq_relative": {
            "ci": (-0.041791817670623024, 0.08070521380910892),
            "p": 0.8762592535365891,
        },
        "seq1000_relative": {"ci": (-0.024286449644332134, 0.06319984578281804)},
        "seq_greater_absolute": {"low": -0.035604779108332436},
        "seq_lesser_absolute": {"high": 0.07084341566622226},
        "seq_greater_relative": {"low": -0.039816212024683814},
        "seq_lesser_relative": {"high": 0.0787296081631697},
        "bayes_flat": {"ctw": 0.9233636161180363},
        # GaussianPrior(mean=0.01, variance=0.0004, proper=True) on the relative lift
        "bayes_proper": {"ctw": 0.928092967363521},
    },
    "proportion": {
        "control": (920, 1000),
        "treatment": (947, 1010),
        "ttest_absolute": {
            "expected": 0.01762376237623753,
            "ci": (-0.004866131456271197, 0.040113656208746254),
            "se": 0.011467623067380233,
            "p": 0.12449545703682596,
        },
        "ttest_relative": {
            "expected": 0.019156263452432095,
            "ci": (-0.005552451450349993, 0.04386497835521418),
            "se": 0.012599002516182985,
            "p": 0.12855559443825415,
        },
        "seq_absolute": {
            "ci": (-0.01818635955429012, 0.05343388430676518),
            "p": 0.8330099608035177,
        },
        "bayes_flat": {"ctw": 0.9358021390963297},
    },
    "proportion_large": {
        "control": (9200, 10000),
        "treatment": (9420, 10000),
        "ttest_absolute": {
            "expected": 0.02199999999999991,
            "ci": (0.014980924183738049, 0.02901907581626177),
            "se": 0.0035810054454021713,
            "p": 8.226808123623641e-10,
        },
        "ttest_relative": {
            "expected": 0.02391304347826077,
            "ci": (0.016178375460127133, 0.03164771149639441),
            "se": 0.003946087635518032,
            "p": 1.386664116864722e-09,
        },
        "seq_absolute": {
            "ci": (0.010801787223059066, 0.03319821277694075),
            "p": 6.4877557062379e-08,
        },
        "seq_greater_absolute": {"low": 0.011728972574381246},
        "bayes_flat": {"ctw": 0.9999999993191268},
    },
    "srm": [
        ([1000, 1100, 950], [0.34, 0.33, 0.33], 0.0013757028583572986),
        ([5050, 4950], [0.5, 0.5], 0.31731050786291115),
        ([180, 820], [0.2, 0.8], 0.11384629800665763),
    ],
}


def sample_mean(total: float, sum_squares: float, n: int) -> RatioStats:
    """gbstats SampleMeanStatistic(sum, sum_squares, n) as a ratio with denominator 1 per unit."""
    return RatioStats(
        n=n,
        m_sum=total,
        m_sum_squares=sum_squares,
        d_sum=float(n),
        d_sum_squares=float(n),
        m_d_sum_of_products=total,
    )


def assert_close(actual: float | None, expected: float, *, rel: float = 1e-9, abs_: float = 0.0):
    """pytest.approx with a None check, so an undefined result fails instead of comparing."""
    assert actual is not None
    assert actual == pytest.approx(expected, rel=rel, abs=abs_)


# ------------------------------------------------------------------ gbstats (reference numbers)


def _clustered_arms() -> tuple[RatioStats, RatioStats]:
    ref = GBSTATS_REFERENCE["clustered"]
    return RatioStats(**ref["control"]), RatioStats(**ref["treatment"])


def test_ratio_variance_matches_gbstats_ratio_statistic():
    control, treatment = _clustered_arms()
    ref = GBSTATS_REFERENCE["clustered"]
    assert_close(control.variance, ref["control_variance"], rel=TIGHT)
    assert_close(treatment.variance, ref["treatment_variance"], rel=TIGHT)


@pytest.mark.parametrize("case", ["clustered", "proportion", "proportion_large"])
def test_compare_matches_gbstats(case: str):
    ref = GBSTATS_REFERENCE[case]
    if case == "clustered":
        control, treatment = _clustered_arms()
    else:
        control = RatioStats.proportion(*ref["control"])
        treatment = RatioStats.proportion(*ref["treatment"])
    result = compare(control, treatment)
    for key, block, estimate in (
        ("ttest_absolute", result["absolute"], "difference"),
        ("ttest_relative", result["relative"], "lift"),
    ):
        expected = ref[key]
        assert_close(block[estimate], expected["expected"], rel=1e-12)
        assert_close(block["se"], expected["se"], rel=1e-12)
        assert_close(block["ci_low"], expected["ci"][0], rel=1e-10)
        assert_close(block["ci_high"], expected["ci"][1], rel=1e-10)
        # gbstats computes 2 * (1 - cdf), which loses ~1e-16 absolute; we use 2 * sf.
        assert_close(block["p_value"], expected["p"], rel=1e-6, abs_=1e-15)
    sequential = ref["seq_absolute"]
    assert_close(result["sequential"]["ci_low"], sequential["ci"][0], rel=1e-10)
    assert_close(result["sequential"]["ci_high"], sequential["ci"][1], rel=1e-10)
    assert_close(result["sequential"]["p_value"], sequential["p"], rel=1e-9)
    assert_close(result["chance_to_win"], ref["bayes_flat"]["ctw"], rel=1e-10)


def test_compare_alpha_and_tuning_match_gbstats():
    control, treatment = _clustered_arms()
    ref = GBSTATS_REFERENCE["clustered"]
    relative = compare(control, treatment, alpha=0.1)["relative"]
    assert_close(relative["ci_low"], ref["ttest_relative_alpha10"]["ci"][0], rel=1e-10)
    assert_close(relative["ci_high"], ref["ttest_relative_alpha10"]["ci"][1], rel=1e-10)
    sequential = compare(control, treatment, tuning=1000)["sequential"]
    assert_close(sequential["ci_low"], ref["seq1000_absolute"]["ci"][0], rel=1e-10)
    assert_close(sequential["ci_high"], ref["seq1000_absolute"]["ci"][1], rel=1e-10)
    assert_close(sequential["p_value"], ref["seq1000_absolute"]["p"], rel=1e-9)


def test_sequential_bounds_on_the_relative_lift_match_gbstats():
    control, treatment = _clustered_arms()
    ref = GBSTATS_REFERENCE["clustered"]
    relative = compare(control, treatment)["relative"]
    lift, se, n = relative["lift"], relative["se"], control.n + treatment.n
    low, high = sequential_bound(lift, se, n)
    assert_close(low, ref["seq_relative"]["ci"][0], rel=1e-10)
    assert_close(high, ref["seq_relative"]["ci"][1], rel=1e-10)
    assert_close(sequential_p_value(lift, se, n), ref["seq_relative"]["p"], rel=1e-9)
    low, high = sequential_bound(lift, se, n, tuning=1000)
    assert_close(low, ref["seq1000_relative"]["ci"][0], rel=1e-10)
    assert_close(high, ref["seq1000_relative"]["ci"][1], rel=1e-10)
    assert sequential_bound(lift, se, n, side="lower") == pytest.approx(
        (ref["seq_greater_relative"]["low"], None)
    )
    assert sequential_bound(lift, se, n, side="upper") == pytest.approx(
        (None, ref["seq_lesser_relative"]["high"])
    )


@pytest.mark.parametrize("case", ["clustered", "proportion_large"])
def test_one_sided_sequential_bounds_match_gbstats(case: str):
    ref = GBSTATS_REFERENCE[case]
    if case == "clustered":
        control, treatment = _clustered_arms()
    else:
        control = RatioStats.proportion(*ref["control"])
        treatment = RatioStats.proportion(*ref["treatment"])
    absolute = compare(control, treatment)["absolute"]
    n = control.n + treatment.n
    low, none = sequential_bound(absolute["difference"], absolute["se"], n, side="lower")
    assert none is None
    assert_close(low, ref["seq_greater_absolute"]["low"], rel=1e-10)
    if "seq_lesser_absolute" in ref:
        none, high = sequential_bound(absolute["difference"], absolute["se"], n, side="upper")
        assert none is None
        assert_close(high, ref["seq_lesser_absolute"]["high"], rel=1e-10)


def test_proper_prior_chance_to_win_matches_gbstats():
    control, treatment = _clustered_arms()
    prior = GaussianPrior(mean=0.01, variance=0.0004, proper=True)
    result = compare(control, treatment, prior=prior)
    assert_close(result["chance_to_win"], GBSTATS_REFERENCE["clustered"]["bayes_proper"]["ctw"])
    # a flat prior object behaves as no prior (GrowthBook's default)
    flat = compare(control, treatment, prior=GaussianPrior(mean=5.0, variance=1e-9))
    assert flat["chance_to_win"] == compare(control, treatment)["chance_to_win"]


@pytest.mark.parametrize(("users", "weights", "expected"), GBSTATS_REFERENCE["srm"])
def test_srm_matches_gbstats_check_srm(users, weights, expected):
    names = [f"arm{i}" for i in range(len(users))]
    result = srm(dict(zip(names, users, strict=True)), dict(zip(names, weights, strict=True)))
    assert_close(result["p_value"], expected, rel=1e-12)
    assert result["detected"] is (expected < 0.001)


# ------------------------------------------- gbstats' own unit tests (inputs and 5-decimal outputs)
# packages/stats/tests/frequentist/test_tests.py


def test_gbstats_worked_example_two_sided_ttest_relative_and_absolute():
    # TestTwoSidedTTest: SampleMeanStatistic(1396.87, 52377.9767, 3407) vs (2422.7, 134698.29, 3461)
    control = sample_mean(1396.87, 52377.9767, 3407)
    treatment = sample_mean(2422.7, 134698.29, 3461)
    result = compare(control, treatment)
    relative, absolute = result["relative"], result["absolute"]
    assert round(relative["lift"], 5) == 0.70732
    assert (round(relative["ci_low"], 5), round(relative["ci_high"], 5)) == (-0.03526, 1.44989)
    assert round(relative["se"], 5) == 0.37879
    assert round(relative["p_value"], 5) == 0.06191
    assert round(absolute["difference"], 5) == round(0.7 - 0.41, 5)
    assert (round(absolute["ci_low"], 5), round(absolute["ci_high"], 5)) == (0.04538, 0.53462)
    assert round(absolute["se"], 5) == 0.12478
    assert round(absolute["p_value"], 5) == 0.02016


def test_gbstats_worked_example_binomial():
    # test_two_sided_ttest_binom: ProportionStatistic(14, 28) vs (16, 30)
    relative = compare(RatioStats.proportion(14, 28), RatioStats.proportion(16, 30))["relative"]
    assert round(relative["lift"], 5) == round((16 / 30 - 0.5) / 0.5, 5)
    assert (round(relative["ci_low"], 5), round(relative["ci_high"], 5)) == (-0.47767, 0.61101)
    assert round(relative["se"], 5) == 0.2717
    assert round(relative["p_value"], 5) == 0.80707


def test_gbstats_worked_example_missing_variance_is_undefined():
    # test_two_sided_ttest_missing_variance: n = 2 with these sums has negative variance -> default
    result = compare(sample_mean(1396.87, 52377.9767, 2), sample_mean(2422.7, 134698.29, 3461))
    assert result["absolute"]["p_value"] is None
    assert result["relative"]["lift"] is None
    assert result["chance_to_win"] is None


def test_gbstats_worked_examples_sequential():
    # TestSequentialTTest.test_sequential_test_runs (tuning 1000) and _runs_prop (default 5000),
    # relative lift, n = both arms together
    control = sample_mean(1396.87, 52377.9767, 3000)
    treatment = sample_mean(2422.7, 134698.29, 3461)
    relative = compare(control, treatment)["relative"]
    assert round(relative["lift"], 5) == 0.50336
    assert round(relative["se"], 5) == 0.33341
    low, high = sequential_bound(relative["lift"], relative["se"], 6461, tuning=1000)
    assert (round(low, 5), round(high, 5)) == (-0.55844, 1.56516)
    assert sequential_p_value(relative["lift"], relative["se"], 6461, tuning=1000) == 1.0

    relative = compare(RatioStats.proportion(1396, 3000), RatioStats.proportion(2422, 3461))[
        "relative"
    ]
    assert round(relative["lift"], 5) == 0.50386
    assert round(relative["se"], 5) == 0.03386
    low, high = sequential_bound(relative["lift"], relative["se"], 6461)
    assert (round(low, 5), round(high, 5)) == (0.40098, 0.60675)
    assert round(sequential_p_value(relative["lift"], relative["se"], 6461), 5) == 0.0

    # TestSequentialOneSidedGreaterTTest: one-sided lower bounds, relative and absolute
    result = compare(control, treatment)
    assert sequential_bound(
        result["relative"]["lift"], result["relative"]["se"], 6461, side="lower"
    )[0] == pytest.approx(-0.42356454602790883, abs=1e-5)
    assert result["absolute"]["difference"] == pytest.approx(0.23437666666666668, rel=1e-12)
    assert result["absolute"]["se"] == pytest.approx(0.12983081254184736, rel=1e-9)
    assert sequential_bound(
        result["absolute"]["difference"], result["absolute"]["se"], 6461, side="lower"
    )[0] == pytest.approx(-0.12656844172804982, abs=1e-5)


def test_gbstats_worked_example_tuning_is_tightest_near_n():
    # test_sequential_test_tuning_as_expected: N* = 10 (far below n) is widest, N* = n tightest
    estimate, se, n = 0.5, 0.33, 6461
    below = sequential_bound(estimate, se, n, tuning=10)
    near = sequential_bound(estimate, se, n, tuning=6461)
    above = sequential_bound(estimate, se, n, tuning=10000)
    assert below[0] < above[0] < near[0]
    assert below[1] > above[1] > near[1]


# packages/stats/tests/bayesian/test_tests.py


def test_gbstats_worked_examples_bayesian():
    # TestBinom: ProportionStatistic(49, 100) vs (51, 100)
    result = compare(RatioStats.proportion(49, 100), RatioStats.proportion(51, 100))
    assert round(result["relative"]["lift"], 5) == 0.04082
    assert round(result["relative"]["se"], 5) == 0.14725
    assert round(result["chance_to_win"], 5) == 0.60918
    # TestNorm: SampleMeanStatistic(100, 1002.25, 10) vs (105, 1111.5, 10), flat and proper prior
    control, treatment = sample_mean(100, 1002.25, 10), sample_mean(105, 1111.5, 10)
    result = compare(control, treatment)
    assert round(result["relative"]["lift"], 5) == 0.05
    assert round(result["relative"]["se"], 5) == 0.03572
    assert round(result["chance_to_win"], 5) == 0.91923
    informative = GaussianPrior(mean=0.1, variance=0.1, proper=True)
    assert round(compare(control, treatment, prior=informative)["chance_to_win"], 5) == 0.92315


# ------------------------------------------------------------------ independent: scipy


def test_absolute_test_is_scipy_welch_ttest_on_raw_units():
    rng = np.random.default_rng(7)
    a = rng.normal(10.0, 3.0, 80)
    b = rng.normal(11.0, 5.0, 65)
    ones_a, ones_b = np.ones_like(a), np.ones_like(b)
    result = compare(RatioStats.from_units(a, ones_a), RatioStats.from_units(b, ones_b))
    welch = sps.ttest_ind(b, a, equal_var=False)
    absolute = result["absolute"]
    assert_close(absolute["difference"], b.mean() - a.mean(), rel=1e-12)
    assert_close(absolute["p_value"], welch.pvalue, rel=1e-9)
    low, high = welch.confidence_interval(0.95)
    assert_close(absolute["ci_low"], low, rel=1e-9)
    assert_close(absolute["ci_high"], high, rel=1e-9)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(920, 1000, 940, 1000), (45, 60, 31, 50)])
def test_proportion_test_is_scipy_welch_from_stats(x1, n1, x2, n2):
    # gbstats' ProportionStatistic variance is p(1 - p) (not n/(n-1) times it); Welch dof.
    p1, p2 = x1 / n1, x2 / n2
    expected = sps.ttest_ind_from_stats(
        p2, math.sqrt(p2 * (1 - p2)), n2, p1, math.sqrt(p1 * (1 - p1)), n1, equal_var=False
    )
    result = compare(RatioStats.proportion(x1, n1), RatioStats.proportion(x2, n2))
    assert_close(result["absolute"]["p_value"], expected.pvalue, rel=1e-9)
    assert_close(result["absolute"]["se"], math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2))


@pytest.mark.parametrize(
    ("observed", "shares"),
    [
        ([510, 490], [0.5, 0.5]),
        ([300, 330, 370], [1, 1, 1]),
        ([100, 240, 260, 400], [0.1, 0.25, 0.25, 0.4]),
        ([1000, 1100, 950], [0.34, 0.33, 0.33]),
    ],
)
def test_srm_is_scipy_chisquare(observed, shares):
    names = [f"v{i}" for i in range(len(observed))]
    total = sum(observed)
    f_exp = [s / sum(shares) * total for s in shares]
    expected = sps.chisquare(observed, f_exp)
    result = srm(dict(zip(names, observed, strict=True)), dict(zip(names, shares, strict=True)))
    assert_close(result["chi2"], expected.statistic, rel=1e-12)
    assert_close(result["p_value"], expected.pvalue, rel=1e-10)
    assert result["detected"] is bool(expected.pvalue < 0.001)


def test_srm_edge_cases():
    assert srm({}, {"a": 0.5, "b": 0.5}) == {"chi2": None, "p_value": None, "detected": False}
    assert srm({"a": 10}, {"a": 1.0}) == {"chi2": None, "p_value": None, "detected": False}
    # traffic in an arm that should get none
    assert srm({"a": 10, "b": 10, "off": 1}, {"a": 0.5, "b": 0.5, "off": 0.0}) == {
        "chi2": None,
        "p_value": 0.0,
        "detected": True,
    }
    # an arm missing from `observed` had no units; one missing from `expected` has share 0
    assert srm({"a": 50}, {"a": 0.5, "b": 0.5})["detected"] is True
    assert srm({"a": 5, "b": 5, "c": 1}, {"a": 0.5, "b": 0.5})["p_value"] == 0.0
    # a switched-off arm without traffic does not count towards the degrees of freedom
    with_off = srm({"a": 520, "b": 480, "off": 0}, {"a": 1, "b": 1, "off": 0})
    assert with_off["p_value"] == pytest.approx(sps.chisquare([520, 480]).pvalue, rel=1e-12)
    with pytest.raises(ValueError):
        srm({"a": 1, "b": 1}, {"a": -0.5, "b": 1.5})


def test_chance_to_win_flat_is_normal_cdf_and_proper_is_posterior_integral():
    control, treatment = RatioStats.proportion(410, 500), RatioStats.proportion(428, 500)
    result = compare(control, treatment)
    lift, se = result["relative"]["lift"], result["relative"]["se"]
    assert_close(result["chance_to_win"], sps.norm.cdf(lift / se), rel=1e-12)
    # Proper prior: P(theta > 0 | data) by integrating likelihood x prior numerically.
    prior = GaussianPrior(mean=-0.01, variance=0.02**2, proper=True)

    def unnormalised(theta: float) -> float:
        return sps.norm.pdf(lift, theta, se) * sps.norm.pdf(theta, prior.mean, prior.variance**0.5)

    width = 12 * se
    above, _ = integrate.quad(unnormalised, 0.0, lift + width)
    total, _ = integrate.quad(unnormalised, lift - width, lift + width, points=[0.0])
    posterior = compare(control, treatment, prior=prior)["chance_to_win"]
    assert_close(posterior, above / total, rel=1e-7)
    assert posterior < result["chance_to_win"]  # a sceptical prior pulls the chance down


# ------------------------------------------------------------------ independent: delta method


def _simulate_clients(rng: np.random.Generator, clients: int, accuracy: float, spread: float):
    """Sticky clients: each sends 5-60 labelled requests and has its own accuracy."""
    requests = rng.integers(5, 61, clients)
    client_accuracy = np.clip(rng.normal(accuracy, spread, clients), 0.0, 1.0)
    correct = rng.binomial(requests, client_accuracy)
    return correct.astype(float), requests.astype(float)


def test_ratio_variance_equals_delta_method_from_raw_arrays():
    rng = np.random.default_rng(11)
    m, d = _simulate_clients(rng, 200, 0.9, 0.07)
    stats = RatioStats.from_units(m, d)
    # Delta method from the raw arrays: gradient of mean(m)/mean(d) and their sample covariance.
    cov = np.cov(np.vstack([m, d]), ddof=1)
    gradient = np.array([1.0 / d.mean(), -m.mean() / d.mean() ** 2])
    assert_close(stats.mean, m.sum() / d.sum(), rel=1e-12)
    assert_close(stats.variance, float(gradient @ cov @ gradient), rel=1e-10)


def test_ratio_standard_error_agrees_with_a_cluster_bootstrap():
    rng = np.random.default_rng(12)
    m, d = _simulate_clients(rng, 300, 0.88, 0.08)
    stats = RatioStats.from_units(m, d)
    se = math.sqrt(stats.variance / stats.n)
    draws = rng.integers(0, m.size, size=(4000, m.size))
    ratios = m[draws].sum(axis=1) / d[draws].sum(axis=1)
    bootstrap_se = ratios.std(ddof=1)
    # 4000 resamples estimate an se to about 1.1% (1/sqrt(2 * 4000)); 6% is far outside that.
    assert se == pytest.approx(bootstrap_se, rel=0.06)


def test_sticky_clients_make_the_ratio_se_larger_than_the_naive_binomial_se():
    # 40 clients x ~30 requests each, client accuracies spread by 0.1: requests are clustered.
    rng = np.random.default_rng(13)
    m, d = _simulate_clients(rng, 40, 0.85, 0.10)
    clustered = RatioStats.from_units(m, d)
    naive = RatioStats.proportion(int(m.sum()), int(d.sum()))
    assert clustered.mean == pytest.approx(naive.mean, rel=1e-12)  # same accuracy...
    se_ratio = math.sqrt(clustered.variance / clustered.n)
    se_naive = math.sqrt(naive.variance / naive.n)
    assert se_ratio > 1.8 * se_naive  # ...but far less evidence than the request count suggests


def test_clustered_aa_tests_keep_their_size_only_with_the_ratio_metric():
    # A/A with sticky clients: the per-request binomial test rejects far more than 5%; the ratio
    # metric over clients stays near it.
    rng = np.random.default_rng(14)
    runs = 300
    ratio_rejects = naive_rejects = 0
    for _ in range(runs):
        arms = [_simulate_clients(rng, 40, 0.85, 0.10) for _ in range(2)]
        ratio = compare(*(RatioStats.from_units(m, d) for m, d in arms))
        naive = compare(*(RatioStats.proportion(int(m.sum()), int(d.sum())) for m, d in arms))
        ratio_rejects += ratio["absolute"]["p_value"] < 0.05
        naive_rejects += naive["absolute"]["p_value"] < 0.05
    # binomial sd of a 5% rate over 300 runs is 1.3 points
    assert ratio_rejects / runs < 0.09
    assert naive_rejects / runs > 0.25


def test_from_units_and_proportion_agree_for_one_outcome_per_unit():
    outcomes = np.array([1.0] * 37 + [0.0] * 13)
    units = RatioStats.from_units(outcomes, np.ones_like(outcomes))
    assert units == RatioStats.proportion(37, 50)
    assert units.is_proportion
    assert_close(units.variance, 0.74 * 0.26, rel=1e-12)


# ------------------------------------------------------------------ sequential


def _paper_halfwidth(s2: float, n: float, alpha: float, tuning: float, rho_alpha: float) -> float:
    """Waudby-Smith et al. (arXiv:2103.06476) eq. 9 with rho from eq. 161, written out again."""
    rho2 = (-2 * math.log(rho_alpha) + math.log(-2 * math.log(rho_alpha) + 1)) / tuning
    return math.sqrt(
        s2 * 2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )


def test_sequential_halfwidth_is_the_papers_formula_and_vectorises():
    for s2, n, alpha, tuning in [(0.0736, 200, 0.05, 5000), (2.5, 10_000, 0.01, 1000)]:
        expected = _paper_halfwidth(s2, n, alpha, tuning, alpha)
        assert_close(sequential_halfwidth(s2, n, alpha=alpha, tuning=tuning), expected, rel=1e-12)
    s2 = np.array([0.05, 0.07, 0.1])
    n = np.array([100, 1000, 10_000])
    vector = sequential_halfwidth(s2, n)
    assert isinstance(vector, np.ndarray) and vector.shape == (3,)
    for i in range(3):
        assert vector[i] == sequential_halfwidth(float(s2[i]), int(n[i]))


def test_sequential_p_value_is_the_smallest_alpha_whose_interval_excludes_the_null():
    estimate, se, n = 0.03, 0.009, 4000
    p = sequential_p_value(estimate, se, n)
    assert 0 < p < 1
    # At alpha = p (rho kept at its alpha = 0.05 tuning, as gbstats does) the interval touches 0.
    assert _paper_halfwidth(se * se * n, n, p, 5000, 0.05) == pytest.approx(estimate, rel=1e-9)
    # And the decision is the same as the 95% interval's, on a grid of estimates.
    for z in np.linspace(0.0, 8.0, 161):
        low, high = sequential_bound(z * se, se, n)
        excludes = low > 0 or high < 0
        assert excludes == (sequential_p_value(z * se, se, n) < 0.05)
    assert sequential_p_value(0.0, se, n) == 1.0
    assert sequential_p_value(10.0, se, n) == 0.0  # underflow, not an overflow error
    assert sequential_p_value(0.01, 0.01, 100, null=0.01) == 1.0


def test_sequential_interval_is_wider_than_the_fixed_horizon_one():
    result = compare(RatioStats.proportion(9200, 10000), RatioStats.proportion(9420, 10000))
    assert result["sequential"]["ci_low"] < result["absolute"]["ci_low"]
    assert result["sequential"]["ci_high"] > result["absolute"]["ci_high"]
    assert result["sequential"]["p_value"] > result["absolute"]["p_value"]


def test_sequential_bound_rejects_bad_arguments_and_handles_undefined():
    assert sequential_bound(0.1, 0.0, 100) == (None, None)
    assert sequential_bound(0.1, 0.05, 0) == (None, None)
    assert sequential_p_value(0.1, 0.0, 100) is None
    with pytest.raises(ValueError):
        sequential_bound(0.1, 0.05, 100, side="both")
    with pytest.raises(ValueError):
        sequential_bound(0.1, 0.05, 100, side="lower", alpha=0.5)
    with pytest.raises(ValueError):
        sequential_bound(0.1, 0.05, 100, tuning=0)


# ------------------------------------------------------------------ guardrail rates


def test_rate_exceeds_fires_on_a_clearly_high_rate_and_not_on_noise():
    assert rate_exceeds(0, 0, 0.05) == {"rate": None, "lower": None, "breached": False}
    high = rate_exceeds(60, 300, 0.05)  # 20% errors against a 5% limit
    assert high["rate"] == pytest.approx(0.2) and high["breached"] is True
    assert high["lower"] < 0.2
    # 8% over 50 trials is above the limit on its face, but not evidence of it
    assert rate_exceeds(4, 50, 0.05)["breached"] is False
    # every request failing: the Wald variance is 0, the floor at the limit keeps a real bound
    all_fail = rate_exceeds(5, 5, 0.05)
    assert all_fail["lower"] < 1.0 and all_fail["breached"] is False
    assert rate_exceeds(200, 200, 0.05)["breached"] is True
    # the limits a guardrail definition may set run from 0 to 1 inclusive
    assert rate_exceeds(1, 10, 0.0)["breached"] is True
    assert rate_exceeds(0, 10, 0.0)["breached"] is False
    assert rate_exceeds(10, 10, 1.0)["breached"] is False
    with pytest.raises(ValueError):
        rate_exceeds(1, 10, 1.5)


def test_rate_exceeds_lower_bound_is_the_one_sided_sequential_bound():
    rate, trials = 0.12, 800
    se = math.sqrt(rate * (1 - rate) / trials)
    expected, _ = sequential_bound(rate, se, trials, side="lower")
    assert_close(rate_exceeds(96, trials, 0.05)["lower"], expected, rel=1e-12)


def test_rate_exceeds_is_always_valid_under_continuous_monitoring():
    # Error rate exactly at the limit, checked after every 50 requests up to 5000: the share of
    # runs that ever breach must stay below the one-sided alpha.
    rng = np.random.default_rng(21)
    runs, limit, step, looks = 400, 0.05, 50, 100
    events = np.cumsum(rng.binomial(step, limit, size=(runs, looks)), axis=1)
    ever = 0
    for run in range(runs):
        ever += any(
            rate_exceeds(int(events[run, k]), step * (k + 1), limit)["breached"]
            for k in range(looks)
        )
    assert ever / runs < 0.05


# ------------------------------------------------------------------ shape, None, JSON


def test_undefined_comparisons_are_none_and_json_clean():
    cases = [
        (RatioStats.proportion(0, 0), RatioStats.proportion(5, 10)),  # no data
        (RatioStats.proportion(1, 1), RatioStats.proportion(5, 10)),  # n < 2
        (RatioStats.proportion(10, 10), RatioStats.proportion(5, 10)),  # zero variance
        (RatioStats.proportion(0, 10), RatioStats.proportion(5, 10)),  # all wrong: zero variance
        (sample_mean(0.0, 10.0, 10), sample_mean(5.0, 12.0, 10)),  # zero baseline mean (gbstats)
    ]
    for control, treatment in cases:
        result = compare(control, treatment)
        assert json.loads(json.dumps(result, allow_nan=False)) == {
            "absolute": dict.fromkeys(("difference", "se", "ci_low", "ci_high", "p_value")),
            "relative": dict.fromkeys(("lift", "se", "ci_low", "ci_high", "p_value")),
            "chance_to_win": None,
            "sequential": dict.fromkeys(("ci_low", "ci_high", "p_value")),
        }
    assert RatioStats.proportion(0, 0).mean is None
    assert RatioStats.proportion(1, 1).variance is None


def test_defined_comparison_is_plain_json():
    result = compare(RatioStats.proportion(900, 1000), RatioStats.proportion(930, 1000))
    text = json.dumps(result, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    for block in ("absolute", "relative", "sequential"):
        assert all(type(v) is float for v in result[block].values())
    assert type(result["chance_to_win"]) is float


def test_compare_all_covers_every_arm_and_flags_shared_control():
    arms = {
        "control": RatioStats.proportion(900, 1000),
        "stacking": RatioStats.proportion(930, 1000),
        "boosting": RatioStats.proportion(905, 1000),
    }
    result = compare_all(arms, "control", tuning=2000)
    assert set(result["comparisons"]) == {"stacking", "boosting"}
    assert result["multiple_comparisons"] is True
    assert result["comparisons"]["stacking"] == compare(
        arms["control"], arms["stacking"], tuning=2000
    )
    two = compare_all({k: arms[k] for k in ("control", "stacking")}, "control")
    assert two["multiple_comparisons"] is False
    with pytest.raises(ValueError):
        compare_all(arms, "nope")


# ------------------------------------------------------------------ sample size


def test_sample_size_reuses_fleiss_and_delivers_its_power():
    n = sample_size(0.92, 0.02)
    assert n == required_sample_size(0.92, 0.02)
    assert sample_size(0.5, 0.1) == 388  # Fleiss without continuity correction: 387.3 -> 388
    # Monte Carlo: the two-sided pooled z-test at that n detects 0.92 -> 0.94 about 80% of the time
    rng = np.random.default_rng(31)
    reps = 20_000
    x1 = rng.binomial(n, 0.92, reps)
    x2 = rng.binomial(n, 0.94, reps)
    pooled = (x1 + x2) / (2 * n)
    z = (x2 - x1) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = float(np.mean(np.abs(z) > 1.959963984540054))
    assert power == pytest.approx(0.80, abs=0.015)  # MC sd is 0.3 points


# Reference generation (not run here; needs gbstats' source, pydantic and pandas):
#
#   from gbstats.frequentist.tests import TwoSidedTTest, FrequentistConfig, SequentialConfig, \
#       SequentialTwoSidedTTest, SequentialOneSidedTreatmentGreaterTTest
#   from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
#   from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic, RatioStatistic
#   from gbstats.utils import check_srm
#   a = RatioStatistic(n=150, m_statistic=SampleMeanStatistic(n=150, sum=1985, sum_squares=35047),
#                      d_statistic=SampleMeanStatistic(n=150, sum=2192, sum_squares=42588),
#                      m_d_sum_of_products=38463)       # b likewise with the treatment sums
#   TwoSidedTTest([(a, b)], FrequentistConfig(difference_type="absolute")).compute_result()
#   SequentialTwoSidedTTest([(a, b)], SequentialConfig(difference_type="absolute",
#                           sequential_tuning_parameter=1000)).compute_result()
#   EffectBayesianABTest([(a, b)], EffectBayesianConfig(prior_effect=GaussianPrior(
#                        mean=0.01, variance=0.0004, proper=True))).compute_result()
#   check_srm([1000, 1100, 950], [0.34, 0.33, 0.33])
