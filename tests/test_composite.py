"""Created ensembles (``ensembles/composite.py``) against numpy by hand, on the fake bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.base import NoMembersLeftError
from ensembles.composite import CombinedNode, MemberNode, predict_node
from ensembles.stacking import tied_meta_model
from tests.fakes import FakeBank

CLASSES = tuple(f"c{i}" for i in range(10))
NAMES = ("m0", "m1", "m2")


@pytest.fixture
def bank() -> FakeBank:
    return FakeBank(NAMES, seed=3)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def node(aggregation: str, weights=None, names=NAMES, **kwargs) -> CombinedNode:
    children = [MemberNode(name=n, classes=CLASSES) for n in names]
    return CombinedNode(
        name="made",
        classes=CLASSES,
        children=children,
        aggregation=aggregation,
        weights=np.ones(len(names)) if weights is None else np.asarray(weights, dtype=float),
        **kwargs,
    )


def test_average_is_the_mean_of_the_members_in_one_forward(bank, x):
    result = predict_node(node("average"), bank, x)
    expected = bank.probabilities(x).mean(axis=0)
    np.testing.assert_allclose(result.probabilities, expected)
    assert bank.calls[0] == (NAMES, 5)  # one batched forward over every member
    assert result.member_names == list(NAMES)


def test_weighted_average_normalises_the_weights(bank, x):
    result = predict_node(node("weighted_average", [3.0, 1.0, 0.0]), bank, x)
    probs = bank.probabilities(x)
    np.testing.assert_allclose(result.probabilities, 0.75 * probs[0] + 0.25 * probs[1])


def test_vote_counts_each_members_top_class(bank, x):
    result = predict_node(node("vote"), bank, x)
    picks = bank.probabilities(x).argmax(axis=-1)
    for row in range(5):
        expected = np.bincount(picks[:, row], minlength=10) / 3
        np.testing.assert_allclose(result.probabilities[row], expected)


def test_max_confidence_takes_the_surest_member(bank, x):
    result = predict_node(node("max_confidence"), bank, x)
    probs = bank.probabilities(x)
    surest = probs.max(axis=-1).argmax(axis=0)
    np.testing.assert_allclose(result.probabilities, probs[surest, np.arange(5)])


def test_nested_ensembles_share_one_forward(bank, x):
    inner = node("average", names=("m0", "m1"))
    outer = CombinedNode(
        name="outer",
        classes=CLASSES,
        children=[inner, MemberNode(name="m2", classes=CLASSES)],
        aggregation="weighted_average",
        weights=np.array([0.5, 0.5]),
    )
    assert outer.leaves() == NAMES
    result = predict_node(outer, bank, x)
    probs = bank.probabilities(x)
    np.testing.assert_allclose(result.probabilities, 0.5 * probs[:2].mean(axis=0) + 0.5 * probs[2])
    assert len(bank.calls) == 2  # the node's forward, then this test's own reference call


def test_a_failed_child_is_dropped_and_named(bank, x):
    bank.fail.add("m1")
    result = predict_node(node("average"), bank, x)
    bank.fail.clear()
    probs = bank.probabilities(x)
    np.testing.assert_allclose(result.probabilities, (probs[0] + probs[2]) / 2)
    assert result.degraded == ["m1"] and result.member_names == ["m0", "m2"]


def test_no_child_left_is_a_typed_error(bank, x):
    bank.fail.update(NAMES)
    with pytest.raises(NoMembersLeftError):
        predict_node(node("average"), bank, x)


def test_stacking_applies_its_meta_model_and_falls_back_to_the_best_child(bank, x):
    probs = bank.probabilities(torch.randn(200, 1, 28, 28))
    labels = probs.mean(axis=0).argmax(axis=-1)
    meta = tied_meta_model(probs, labels)
    stacked = node("stacking", meta=meta, child_accuracy=[0.5, 0.9, 0.7])
    result = predict_node(stacked, bank, x)
    np.testing.assert_allclose(result.probabilities, meta.predict_proba(bank.probabilities(x)))
    assert result.fallback is None
    bank.fail.add("m0")
    fallen = predict_node(stacked, bank, x)
    assert fallen.fallback is not None and fallen.fallback.model == "m1"  # best survivor
    bank.fail.clear()
    np.testing.assert_allclose(fallen.probabilities, bank.probabilities(x)[1])


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.9, 1.0])
def test_cascade_predict_matches_the_all_at_once_combination(bank, x, threshold):
    cascade = node("cascade", [1.0, 2.0, 1.0], threshold=threshold)
    lazy = predict_node(cascade, bank, x)
    outputs = dict(zip(NAMES, bank.probabilities(x), strict=True))
    eager = cascade.evaluate(outputs)
    np.testing.assert_allclose(lazy.probabilities, eager.probabilities)
    np.testing.assert_array_equal(lazy.members_used, eager.members_used)


def test_cascade_runs_later_models_only_on_undecided_images(bank, x):
    cascade = node("cascade", threshold=0.6)
    result = predict_node(cascade, bank, x)
    first = bank.probabilities(x)[0]
    undecided = int((first.max(axis=-1) < 0.6).sum())
    assert bank.calls[0] == (("m0",), 5)
    if undecided:
        assert bank.calls[1] == (("m1",), undecided)
    assert result.members_used.min() >= 1 and result.members_used.max() <= 3
    np.testing.assert_array_equal(result.members_used == 1, first.max(axis=-1) >= 0.6)
