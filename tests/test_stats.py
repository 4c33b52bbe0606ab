"""A/B statistics against hand computations, published tables and independent estimates."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from experiments.stats import (
    SRM_ALPHA,
    ab_results,
    additional_samples_needed,
    arm_summary,
    normal_quantile,
    percentile,
    prob_b_better,
    required_sample_size,
    srm_test,
    two_proportion_test,
    wilson_interval,
)

ARM_KEYS = {
    "served",
    "labelled",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "mean_confidence",
    "latency_p50_ms",
    "latency_p95_ms",
    "fallbacks",
    "errors",
}


def strict_json(value):
    """Round-trip through JSON with NaN/inf forbidden, as the API must."""
    return json.loads(json.dumps(value, allow_nan=False))


# --- normal quantiles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "z"),
    [(0.975, 1.959964), (0.8, 0.841621), (0.95, 1.644854), (0.5, 0.0), (0.025, -1.959964)],
)
def test_normal_quantile_known_values(p, z):
    assert normal_quantile(p) == pytest.approx(z, abs=1e-6)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_normal_quantile_rejects_the_ends(p):
    with pytest.raises(ValueError):
        normal_quantile(p)


# --- Wilson ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # 8/10: z^2/n = 0.38415, centre = (0.8 + 0.19207) / 1.38415 = 0.71674,
        # half = 1.95996 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22658.
        (8, 10, 0.4902, 0.9433),
        # 0/10: centre = half = 0.19207 / 1.38415 = 0.13877 -> (0, 0.27753).
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        # 1/1: centre = (1 + 1.92073) / 4.84146 = 0.60328 = half -> (0.20654, 1).
        (1, 1, 0.2065, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_hand_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_is_exact_at_the_bounds_and_none_without_data():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (None, None)


def test_wilson_interval_narrows_with_z():
    wide = wilson_interval(8, 10)
    narrow = wilson_interval(8, 10, z=NormalDist().inv_cdf(0.95))
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]


@pytest.mark.parametrize(("successes", "n"), [(-1, 10), (11, 10), (0, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, n)


# --- two-proportion test -----------------------------------------------------------------------


def test_two_proportion_z_test_hand_computation():
    """45/100 vs 60/100: pooled p = 105/200 = 0.525, se = sqrt(0.525 * 0.475 * 0.02) = 0.070622,
    z = 0.15 / 0.070622 = 2.12398, p = 2 * (1 - Phi(z)) = 0.03368."""
    result = two_proportion_test(45, 100, 60, 100)
    se = math.sqrt(0.525 * 0.475 * (1 / 100 + 1 / 100))
    assert result["difference"] == pytest.approx(0.15)
    assert result["z"] == pytest.approx(0.15 / se)
    assert result["z"] == pytest.approx(2.1239, abs=1e-4)
    assert result["p_value"] == pytest.approx(2 * (1 - NormalDist().cdf(0.15 / se)), rel=1e-9)
    assert result["p_value"] == pytest.approx(0.03368, abs=1e-5)


def test_difference_is_boosting_minus_bagging():
    better_boosting = two_proportion_test(45, 100, 60, 100)
    better_bagging = two_proportion_test(60, 100, 45, 100)
    assert better_boosting["difference"] > 0 > better_bagging["difference"]
    assert better_bagging["z"] == pytest.approx(-better_boosting["z"])
    assert better_bagging["p_value"] == pytest.approx(better_boosting["p_value"])
    assert better_bagging["ci_low"] == pytest.approx(-better_boosting["ci_high"])


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10, with arms
        # swapped because the paper reports p1 - p2 and we report boosting (arm 2) - bagging.
        (48, 80, 56, 70, 0.0524, 0.3339),
        (3, 10, 9, 10, 0.1705, 0.8090),
        (2, 7, 6, 7, 0.0582, 0.8062),
        (0, 29, 5, 56, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.2775, 0.1611),
    ],
)
def test_newcombe_interval_matches_the_published_table(x1, n1, x2, n2, low, high):
    result = two_proportion_test(x1, n1, x2, n2)
    assert result["ci_low"] == pytest.approx(low, abs=5e-5)
    assert result["ci_high"] == pytest.approx(high, abs=5e-5)
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [(0, 10, 0, 20), (10, 10, 30, 30), (0, 1, 0, 1)],
)
def test_zero_pooled_variance_means_no_evidence_not_a_crash(x1, n1, x2, n2):
    result = two_proportion_test(x1, n1, x2, n2)
    assert result["difference"] == 0.0
    assert result["z"] == 0.0
    assert result["p_value"] == 1.0


def test_all_wrong_versus_all_right_is_significant_and_bounded():
    result = two_proportion_test(0, 10, 10, 10)
    assert result["difference"] == 1.0
    assert result["z"] == pytest.approx(math.sqrt(20))  # pooled 0.5: 1 / sqrt(0.25 * 0.2)
    assert result["p_value"] == pytest.approx(7.74e-6, rel=1e-3)
    assert result["ci_low"] == pytest.approx(0.6075, abs=5e-5)
    assert result["ci_high"] == 1.0


@pytest.mark.parametrize(("n1", "n2"), [(0, 10), (10, 0), (0, 0)])
def test_two_proportion_test_is_all_none_without_data(n1, n2):
    result = two_proportion_test(0, n1, 0, n2)
    assert result == {
        "difference": None,
        "ci_low": None,
        "ci_high": None,
        "z": None,
        "p_value": None,
    }


# --- P(boosting better) ------------------------------------------------------------------------


def _log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def evan_miller_exact(x1, n1, x2, n2):
    """Closed form for P(pB > pA), integer alpha_B (evanmiller.org/bayesian-ab-testing.html)."""
    alpha_a, beta_a = 1 + x1, 1 + n1 - x1
    alpha_b, beta_b = 1 + x2, 1 + n2 - x2
    return math.fsum(
        math.exp(
            _log_beta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - _log_beta(1 + i, beta_b)
            - _log_beta(alpha_a, beta_a)
        )
        for i in range(alpha_b)
    )


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "expected"),
    [
        (0, 0, 0, 0, 0.5),
        # Beta(1, 1) vs Beta(1, 6): P(U > V) with V ~ Beta(1, 6) is 1 / 7.
        (0, 0, 0, 5, 1 / 7),
        # Beta(1, 1) vs Beta(2, 1): P(max of two uniforms > uniform) = 2 / 3.
        (0, 0, 1, 1, 2 / 3),
        (45, 100, 60, 100, None),
        (8, 10, 3, 10, None),
        (400, 1000, 430, 1000, None),
        (0, 20, 20, 20, None),
    ],
)
def test_prob_b_better_matches_the_closed_form(x1, n1, x2, n2, expected):
    exact = evan_miller_exact(x1, n1, x2, n2)
    if expected is not None:
        assert exact == pytest.approx(expected, abs=1e-12)
    assert prob_b_better(x1, n1, x2, n2) == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "prior"),
    [
        (45, 100, 60, 100, (1, 1)),
        (0, 10, 1, 10, (0.5, 0.5)),  # Jeffreys prior: the density is unbounded at 0
        (9000, 10000, 9050, 10000, (1, 1)),
    ],
)
def test_prob_b_better_agrees_with_monte_carlo(x1, n1, x2, n2, prior):
    rng = np.random.default_rng(20240601)
    draws = 1_000_000
    p1 = rng.beta(prior[0] + x1, prior[1] + n1 - x1, draws)
    p2 = rng.beta(prior[0] + x2, prior[1] + n2 - x2, draws)
    estimate = float(np.mean(p2 > p1))
    # Four Monte-Carlo standard errors: sqrt(0.25 / 1e6) = 5e-4 at most.
    assert prob_b_better(x1, n1, x2, n2, prior=prior) == pytest.approx(estimate, abs=2e-3)


def test_prob_b_better_is_complementary_and_symmetric():
    forward = prob_b_better(45, 100, 60, 100)
    # Evan Miller's sum gives 0.982846; the normal approximation (0.9836) is close, not equal.
    assert forward == pytest.approx(0.98285, abs=1e-5)
    assert prob_b_better(60, 100, 45, 100) == pytest.approx(1 - forward, abs=1e-9)
    assert prob_b_better(30, 70, 30, 70) == 0.5


def test_prob_b_better_saturates_for_huge_separated_samples():
    assert prob_b_better(100_000, 1_000_000, 900_000, 1_000_000) == 1.0
    assert prob_b_better(900_000, 1_000_000, 100_000, 1_000_000) == 0.0
    close = prob_b_better(900_000, 1_000_000, 900_600, 1_000_000)
    # Normal approximation: z = 0.0006 / sqrt(2 * 0.09 / 1e6) = 1.4142 -> Phi(z) = 0.92135.
    assert close == pytest.approx(NormalDist().cdf(0.0006 / math.sqrt(0.18e-6)), abs=1e-3)


@pytest.mark.parametrize("prior", [(0, 1), (1, -1), (float("nan"), 1), (float("inf"), 1)])
def test_prob_b_better_rejects_improper_priors(prior):
    with pytest.raises(ValueError, match="prior"):
        prob_b_better(1, 2, 1, 2, prior=prior)


# --- sample-ratio mismatch ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n1", "n2", "share", "chi2", "p_value", "ok"),
    [
        (500, 500, 0.5, 0.0, 1.0, True),
        # 450/550 vs 500/500: chi2 = 2 * 50^2 / 500 = 10, p = erfc(sqrt(5)) = 0.0015654.
        (450, 550, 0.5, 10.0, 0.0015654, True),
        # 440/560: chi2 = 2 * 60^2 / 500 = 14.4, p = 2 * (1 - Phi(3.7947)) = 0.00014780.
        (440, 560, 0.5, 14.4, 0.00014780, False),
        (800, 200, 0.2, 0.0, 1.0, True),
        # 750/250 at 20% boosting: (50^2 / 800) + (50^2 / 200) = 15.625.
        # p = 2 * (1 - Phi(3.9528)) = 7.7227e-5.
        (750, 250, 0.2, 15.625, 7.7227e-5, False),
    ],
)
def test_srm_test_table(n1, n2, share, chi2, p_value, ok):
    result = srm_test(n1, n2, share)
    assert result["chi2"] == pytest.approx(chi2)
    assert result["p_value"] == pytest.approx(p_value, rel=1e-4)
    assert result["ok"] is ok


def test_srm_p_value_is_the_chi_square_one_df_tail():
    # chi2(1) tail = P(|Z| > sqrt(chi2)), independent of erfc.
    result = srm_test(450, 550)
    assert result["p_value"] == pytest.approx(2 * (1 - NormalDist().cdf(math.sqrt(10))))
    assert SRM_ALPHA == 0.001


@pytest.mark.parametrize(
    ("n1", "n2", "share", "expected"),
    [
        (0, 0, 0.5, {"chi2": None, "p_value": None, "ok": True}),
        (10, 0, 0.0, {"chi2": 0.0, "p_value": 1.0, "ok": True}),
        (0, 10, 1.0, {"chi2": 0.0, "p_value": 1.0, "ok": True}),
        (9, 1, 0.0, {"chi2": None, "p_value": 0.0, "ok": False}),
        (1, 9, 1.0, {"chi2": None, "p_value": 0.0, "ok": False}),
    ],
)
def test_srm_test_edge_cases(n1, n2, share, expected):
    assert srm_test(n1, n2, share) == expected


@pytest.mark.parametrize(("n1", "n2", "share"), [(-1, 5, 0.5), (5, 5, 1.5), (5, 5, -0.1)])
def test_srm_test_rejects_bad_input(n1, n2, share):
    with pytest.raises(ValueError):
        srm_test(n1, n2, share)


# --- sample size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p_base", "mde", "alpha", "power", "expected"),
    [
        # 0.5 -> 0.6: (1.95996 * sqrt(2 * .55 * .45) + 0.84162 * sqrt(.25 + .24))^2 / 0.01
        #           = (1.37896 + 0.58914)^2 / 0.01 = 387.3 -> 388.
        (0.5, 0.1, 0.05, 0.8, 388),
        # 0.8 -> 0.82: (1.95996 * 0.55480 + 0.84162 * 0.55462)^2 / 0.0004 = 6038.6 -> 6039.
        (0.8, 0.02, 0.05, 0.8, 6039),
        # 0.95 -> 1.05 is impossible, so the alternative is 0.85: 140.5 -> 141.
        (0.95, 0.1, 0.05, 0.8, 141),
        # 0.5 -> 0.6 at 90% power: z_0.9 = 1.28155 -> (1.37896 + 0.89709)^2 / 0.01 = 518.0 -> 519.
        (0.5, 0.1, 0.05, 0.9, 519),
    ],
)
def test_required_sample_size_hand_values(p_base, mde, alpha, power, expected):
    assert required_sample_size(p_base, mde, alpha=alpha, power=power) == expected


def test_required_sample_size_agrees_with_cohens_h_approximation():
    # Arcsine approximation: n = 2 * ((z_a + z_b) / h)^2, within 1% of the Fleiss formula.
    h = 2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.5))
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    assert required_sample_size(0.5, 0.1) == pytest.approx(2 * (z / h) ** 2, rel=0.01)


@pytest.mark.parametrize(
    ("p_base", "mde"),
    [(-0.1, 0.02), (1.1, 0.02), (0.5, 0.0), (0.5, -0.02), (0.5, 0.6), (0.5, 1.5)],
)
def test_required_sample_size_rejects_bad_input(p_base, mde):
    with pytest.raises(ValueError):
        required_sample_size(p_base, mde)


@pytest.mark.parametrize(
    ("n1", "n2", "expected"),
    [(0, 0, 388), (100, 300, 288), (388, 400, 0), (1000, 1000, 0)],
)
def test_additional_samples_needed(n1, n2, expected):
    assert additional_samples_needed(n1, n2, 0.5, 0.1) == expected


# --- percentile --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 95, 3.85),
        ([4, 1, 3, 2], 0, 1.0),
        ([4, 1, 3, 2], 100, 4.0),
        ([7.5], 95, 7.5),
        ([], 50, None),
    ],
)
def test_percentile_table(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_matches_numpy_linear():
    values = np.random.default_rng(0).exponential(30.0, 257).tolist()
    for q in (0, 5, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize(("values", "q"), [([1.0], -1), ([1.0], 101), ([1.0, float("nan")], 50)])
def test_percentile_rejects_bad_input(values, q):
    with pytest.raises(ValueError):
        percentile(values, q)


# --- arm summary -------------------------------------------------------------------------------


def record(correct=None, confidence=0.9, latency_ms=10.0, fallback=False, error=False):
    return {
        "correct": correct,
        "confidence": confidence,
        "latency_ms": latency_ms,
        "fallback": fallback,
        "error": error,
    }


def test_arm_summary_counts_and_rates():
    records = (
        [record(True, 0.9, 10.0) for _ in range(8)]
        + [record(False, 0.6, 20.0, fallback=True) for _ in range(2)]
        + [record(None, 0.3, 30.0)]
        + [record(None, None, 500.0, error=True)]
    )
    summary = arm_summary(records)
    assert set(summary) == ARM_KEYS
    assert summary["served"] == 11
    assert summary["errors"] == 1
    assert summary["labelled"] == 10
    assert summary["correct"] == 8
    assert summary["accuracy"] == pytest.approx(0.8)
    assert summary["ci_low"] == pytest.approx(0.4902, abs=5e-5)
    assert summary["ci_high"] == pytest.approx(0.9433, abs=5e-5)
    assert summary["mean_confidence"] == pytest.approx((8 * 0.9 + 2 * 0.6 + 0.3) / 11)
    # Latencies of served requests only: eight 10s, two 20s, one 30 -> p50 = 10, p95 = 25.
    assert summary["latency_p50_ms"] == pytest.approx(10.0)
    assert summary["latency_p95_ms"] == pytest.approx(25.0)
    assert summary["fallbacks"] == 2


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (
            [],
            {
                "served": 0,
                "labelled": 0,
                "correct": 0,
                "accuracy": None,
                "ci_low": None,
                "ci_high": None,
                "mean_confidence": None,
                "latency_p50_ms": None,
                "latency_p95_ms": None,
                "fallbacks": 0,
                "errors": 0,
            },
        ),
        (
            [record(None), record(None)],
            {"served": 2, "labelled": 0, "accuracy": None, "ci_low": None, "ci_high": None},
        ),
        (
            [record(True) for _ in range(10)],
            {"labelled": 10, "correct": 10, "accuracy": 1.0, "ci_high": 1.0},
        ),
        (
            [record(False) for _ in range(10)],
            {"labelled": 10, "correct": 0, "accuracy": 0.0, "ci_low": 0.0},
        ),
        (
            [record(True, error=True), record(None, error=True)],
            {"served": 0, "errors": 2, "labelled": 0, "accuracy": None, "latency_p50_ms": None},
        ),
    ],
)
def test_arm_summary_edge_cases(records, expected):
    summary = arm_summary(records)
    assert set(summary) == ARM_KEYS
    for key, value in expected.items():
        assert summary[key] == value, key
    strict_json(summary)


def test_arm_summary_skips_missing_and_non_finite_numbers():
    records = [
        {"correct": True, "confidence": float("nan"), "latency_ms": None},
        {"correct": False, "confidence": 0.5, "latency_ms": float("inf")},
        {"confidence": 0.7, "latency_ms": 12.0},
    ]
    summary = strict_json(arm_summary(records))
    assert summary["served"] == 3
    assert summary["labelled"] == 2
    assert summary["mean_confidence"] == pytest.approx(0.6)
    assert summary["latency_p50_ms"] == 12.0
    assert summary["fallbacks"] == 0 and summary["errors"] == 0


def test_arm_summary_accepts_a_generator():
    summary = arm_summary(record(i % 2 == 0) for i in range(4))
    assert summary["served"] == 4 and summary["correct"] == 2


# --- the results contract ----------------------------------------------------------------------


def arm_records(correct, labelled, served=None):
    served = labelled if served is None else served
    return (
        [record(True) for _ in range(correct)]
        + [record(False) for _ in range(labelled - correct)]
        + [record(None) for _ in range(served - labelled)]
    )


def test_ab_results_contract():
    results = ab_results(
        {"bagging": arm_records(45, 100), "boosting": arm_records(60, 100)}, mde=0.1
    )
    assert set(results) == {
        "arms",
        "difference",
        "p_value",
        "prob_boosting_better",
        "srm_p_value",
        "srm_ok",
        "samples_needed_per_arm",
        "mde",
    }
    assert set(results["arms"]) == {"bagging", "boosting"}
    assert all(set(arm) == ARM_KEYS for arm in results["arms"].values())
    assert set(results["difference"]) == {"boosting_minus_bagging", "ci_low", "ci_high", "z"}
    assert results["difference"]["boosting_minus_bagging"] == pytest.approx(0.15)
    assert results["difference"]["z"] == pytest.approx(2.1239, abs=1e-4)
    assert results["difference"]["ci_low"] < 0.15 < results["difference"]["ci_high"]
    assert results["p_value"] == pytest.approx(0.03368, abs=1e-5)
    assert results["prob_boosting_better"] == pytest.approx(0.98285, abs=1e-5)
    assert results["srm_p_value"] == 1.0
    assert results["srm_ok"] is True
    # Baseline 0.45 -> 0.55: (1.95996 * sqrt(.5) + 0.84162 * sqrt(.495))^2 / .01
    #                      = (1.38591 + 0.59213)^2 / .01 = 391.3 -> 392, minus 100 labelled.
    assert results["samples_needed_per_arm"] == 392 - 100
    assert results["mde"] == 0.1
    assert strict_json(results) == results


def test_ab_results_with_no_data_is_all_nulls_not_errors():
    results = strict_json(ab_results({}))
    assert results["arms"]["bagging"]["served"] == 0
    assert results["difference"] == {
        "boosting_minus_bagging": None,
        "ci_low": None,
        "ci_high": None,
        "z": None,
    }
    assert results["p_value"] is None
    assert results["prob_boosting_better"] is None
    assert results["srm_p_value"] is None and results["srm_ok"] is True
    assert results["samples_needed_per_arm"] is None
    assert results["mde"] == 0.02


def test_ab_results_p_value_is_null_while_one_arm_has_no_labels():
    results = ab_results({"bagging": arm_records(40, 50), "boosting": arm_records(0, 0, 50)})
    assert results["arms"]["boosting"]["served"] == 50
    assert results["p_value"] is None
    assert results["prob_boosting_better"] is None
    assert results["difference"]["boosting_minus_bagging"] is None
    # Bagging has labels, so the sample size is known: base 0.8, mde 0.02 -> 6039 - min(50, 0).
    assert results["samples_needed_per_arm"] == 6039
    assert results["srm_ok"] is True


def test_ab_results_flags_a_sample_ratio_mismatch_against_the_configured_split():
    records = {"bagging": arm_records(0, 0, 440), "boosting": arm_records(0, 0, 560)}
    assert ab_results(records)["srm_ok"] is False
    assert ab_results(records)["srm_p_value"] == pytest.approx(0.00014780, rel=1e-4)
    records = {"bagging": arm_records(0, 0, 800), "boosting": arm_records(0, 0, 200)}
    assert ab_results(records, expected_share_boosting=0.2)["srm_ok"] is True
    assert ab_results(records)["srm_ok"] is False


def test_ab_results_identical_perfect_arms():
    results = ab_results({"bagging": arm_records(20, 20), "boosting": arm_records(30, 30)})
    assert results["p_value"] == 1.0
    assert results["difference"]["z"] == 0.0
    assert 0.0 < results["prob_boosting_better"] < 1.0
    strict_json(results)


def test_ab_results_rejects_unknown_arms():
    with pytest.raises(ValueError, match="stacking"):
        ab_results({"bagging": [], "stacking": []})
