"""The paired McNemar test that `make evaluate` prints for every pair of strategies."""

import numpy as np
import pytest
from scipy.stats import binomtest

from ensembles.metrics import mcnemar


def test_mcnemar_by_hand():
    # three images only A got right, none only B: p = 2 * (1/2)^3
    a = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 0, 0, 1, 0, 0], dtype=bool)
    assert mcnemar(a, b) == {"a_only": 3, "b_only": 0, "p_value": 0.25}
    assert mcnemar(a, a) == {"a_only": 0, "b_only": 0, "p_value": 1.0}


@pytest.mark.parametrize(("a_only", "b_only", "both"), [(40, 31, 900), (120, 171, 9000), (5, 0, 3)])
def test_mcnemar_matches_scipys_exact_binomial_test(a_only, b_only, both):
    rng = np.random.default_rng(a_only)
    rows = np.array([[1, 0]] * a_only + [[0, 1]] * b_only + [[1, 1]] * both + [[0, 0]] * 17)
    rows = rows[rng.permutation(len(rows))].astype(bool)
    result = mcnemar(rows[:, 0], rows[:, 1])
    assert (result["a_only"], result["b_only"]) == (a_only, b_only)
    expected = binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected, abs=1e-6)
