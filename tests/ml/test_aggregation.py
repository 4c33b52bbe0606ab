"""Aggregation rules against hand-computed values."""

import numpy as np
import pytest

from ensembles import aggregation

# 3 members, 2 images, 3 classes
PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]],
        [[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]],
        [[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]],
    ]
)


def test_average_is_the_mean():
    expected = np.array([[0.4, 0.5, 0.1], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(aggregation.average(PROBS), expected)


def test_weighted_average_normalises_weights():
    # weights 1, 2, 1 -> 0.25, 0.5, 0.25
    expected_row0 = 0.25 * PROBS[0, 0] + 0.5 * PROBS[1, 0] + 0.25 * PROBS[2, 0]
    out = aggregation.weighted_average(PROBS, np.array([1.0, 2.0, 1.0]))
    np.testing.assert_allclose(out[0], expected_row0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_hard_vote_counts_argmaxes():
    # image 0 picks: 0, 1, 0 -> class 0 with 2/3; image 1 picks: 1, 2, 2 -> class 2 with 2/3
    out = aggregation.vote(PROBS)
    np.testing.assert_allclose(out, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])


def test_weighted_vote_can_overrule_majority():
    out = aggregation.vote(PROBS, np.array([0.1, 5.0, 0.1]))
    # image 0: picks 0, 1, 0 but member 1 outweighs the other two; image 1: picks 1, 2, 2
    assert out.argmax(axis=1).tolist() == [1, 2]


def test_max_confidence_takes_the_surest_member():
    out = aggregation.max_confidence(PROBS)
    np.testing.assert_allclose(out, [PROBS[1, 0], PROBS[2, 1]])


@pytest.mark.parametrize(
    "weights",
    [
        np.array([1.0, -1.0, 1.0]),
        np.array([0.0, 0.0, 0.0]),
        np.array([1.0, np.nan, 1.0]),
        np.ones(2),
    ],
)
def test_bad_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="weights"):
        aggregation.weighted_average(PROBS, weights)
