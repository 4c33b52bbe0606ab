"""SAMME weight and alpha updates against a hand computation."""

import math

import numpy as np
import pytest

from ensembles.boosting import samme_step


def test_samme_step_matches_hand_computation():
    # 4 equal weights, one miss, K = 3, learning rate 1:
    # err = 0.25; alpha = log(0.75 / 0.25) + log(2) = log 6 = 1.791759
    # the miss becomes 0.25 * 6 = 1.5, others stay 0.25; sum 2.25 -> 2/3 and 1/9 each
    step = samme_step(np.full(4, 0.25), np.array([True, False, False, False]), n_classes=3)
    assert step.error == pytest.approx(0.25)
    assert step.alpha == pytest.approx(math.log(6))
    np.testing.assert_allclose(step.weights, [2 / 3, 1 / 9, 1 / 9, 1 / 9])
    assert not step.stop


def test_learning_rate_shrinks_alpha_and_update():
    # weights 0.1, 0.2, 0.3, 0.4; misses on the first two -> err = 0.3
    # alpha = 0.5 * (log(0.7 / 0.3) + log 9) = 0.5 * (0.847298 + 2.197225) = 1.522261
    w = np.array([0.1, 0.2, 0.3, 0.4])
    step = samme_step(w, np.array([True, True, False, False]), n_classes=10, learning_rate=0.5)
    assert step.error == pytest.approx(0.3)
    assert step.alpha == pytest.approx(1.522261, abs=1e-6)
    factor = math.exp(1.522261)
    raw = np.array([0.1 * factor, 0.2 * factor, 0.3, 0.4])
    np.testing.assert_allclose(step.weights, raw / raw.sum(), rtol=1e-6)


def test_unnormalised_weights_give_the_same_error():
    step = samme_step(np.array([2.0, 2.0, 4.0]), np.array([False, True, False]), n_classes=3)
    assert step.error == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("misses", "n_classes"),
    [([True, True, False, False], 2), ([True, True, True, False], 3), ([True] * 4, 10)],
)
def test_no_better_than_chance_stops(misses, n_classes):
    step = samme_step(np.full(4, 0.25), np.array(misses), n_classes=n_classes)
    assert step.stop and step.weights is None and step.alpha == 0.0


def test_perfect_member_stops_with_unit_alpha():
    step = samme_step(np.full(4, 0.25), np.zeros(4, dtype=bool), n_classes=10)
    assert step.stop and step.error == 0.0 and step.alpha == 1.0
    np.testing.assert_allclose(step.weights, 0.25)
