"""Stacking's meta-model: the tied and the full logistic regression, and the choice."""

import json

import numpy as np
import pytest

from ensembles.metrics import nll
from ensembles.stacking import (
    ABSENT_CLASS_INTERCEPT,
    MetaModel,
    fit_meta_model,
    full_meta_model,
    meta_candidates,
    tied_meta_model,
)

K, N, C = 3, 20_000, 4


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def pooled():
    """Member probabilities and labels drawn from a known weighted log-linear pool."""
    rng = np.random.default_rng(7)
    probs = _softmax(rng.normal(0.0, 2.0, size=(K, N, C)))
    w, b = np.array([1.5, 0.5, 0.0]), np.array([0.3, -0.2, 0.0, 0.1])
    truth = _softmax(np.tensordot(w, np.log(probs), axes=1) + b)
    labels = np.array([rng.choice(C, p=row) for row in truth])
    return probs, labels, w, b


def test_tied_fit_recovers_the_pool_that_made_the_labels(pooled):
    probs, labels, w, b = pooled
    meta = tied_meta_model(probs, labels)
    fitted_w = [meta.coef[0, k * C] for k in range(K)]
    np.testing.assert_allclose(fitted_w, w, atol=0.1)
    # biases are identified only up to a shared constant
    np.testing.assert_allclose(meta.intercept - meta.intercept.mean(), b - b.mean(), atol=0.1)


def test_tied_model_is_a_logistic_regression_with_diagonal_blocks(pooled):
    probs, labels, _, _ = pooled
    meta = tied_meta_model(probs[:, :2000], labels[:2000])
    blocks = meta.coef.reshape(C, K, C)
    for k in range(K):
        np.testing.assert_array_equal(blocks[:, k], np.eye(C) * blocks[0, k, 0])
    w = blocks[0, :, 0]
    expected = _softmax(np.tensordot(w, np.log(probs[:, :50]), axes=1) + meta.intercept)
    np.testing.assert_allclose(meta.predict_proba(probs[:, :50]), expected, atol=1e-12)
    # plain arrays, like the full model: what the artifact stores and serving reads
    again = MetaModel.from_arrays(
        json.loads(json.dumps({k: v.tolist() for k, v in meta.to_arrays().items()}))
    )
    np.testing.assert_allclose(again.predict_proba(probs[:, :50]), expected, atol=1e-12)


def test_class_absent_from_the_blend_split_is_never_predicted(pooled):
    probs, labels, _, _ = pooled
    keep = labels != 2
    # every member is all but sure of class 2: only the absent-class intercept stops it
    sure = np.full((K, 50, C), 0.001)
    sure[:, :, 2] = 1 - 0.001 * (C - 1)
    for meta in (
        tied_meta_model(probs[:, keep], labels[keep]),
        full_meta_model(probs[:, keep], labels[keep], c=1.0),
    ):
        assert meta.intercept[2] == ABSENT_CLASS_INTERCEPT
        assert 2 not in meta.predict_proba(np.concatenate([probs[:, :200], sure], axis=1)).argmax(1)


def test_cross_validation_counts_only_the_classes_present(pooled, caplog):
    probs, labels, _, _ = pooled
    probs, labels = probs[:, :3000], labels[:3000]
    middle_missing = labels != 1
    _, _, scores = fit_meta_model(
        probs[:, middle_missing], labels[middle_missing], meta_candidates((0.01,)), cv=3, seed=0
    )
    assert set(scores) == {"full C=0.01", "tied"}
    lonely = np.flatnonzero(labels == 3)[1:]  # class 3 keeps a single image
    keep = np.setdiff1d(np.arange(len(labels)), lonely)
    _, chosen, scores = fit_meta_model(
        probs[:, keep], labels[keep], meta_candidates((0.01,)), cv=3, seed=0
    )
    assert scores == {} and chosen == "full C=0.01"
    assert "no cross-validation" in caplog.text


def test_choice_goes_to_the_lowest_cross_validated_log_loss(pooled):
    probs, labels, _, _ = pooled
    probs, labels = probs[:, :3000], labels[:3000]

    def uniform(p: np.ndarray, y: np.ndarray) -> MetaModel:
        return MetaModel(coef=np.zeros((C, K * C)), intercept=np.zeros(C))

    candidates = {"uniform": uniform, **meta_candidates((0.01,), "auto")}
    meta, chosen, scores = fit_meta_model(probs, labels, candidates, cv=3, seed=0)
    assert set(scores) == {"uniform", "full C=0.01", "tied"}
    assert scores["uniform"] == pytest.approx(np.log(C), abs=1e-6)  # an outside check of the CV
    assert chosen == min(scores, key=scores.get) == "tied"  # the labels came from a tied pool
    # the chosen model is refitted on the whole blend split, not one fold
    np.testing.assert_allclose(meta.coef, tied_meta_model(probs, labels).coef)
    assert nll(meta.predict_proba(probs), labels) < scores["uniform"]


def test_one_candidate_needs_no_cross_validation(pooled):
    probs, labels, _, _ = pooled
    _, chosen, scores = fit_meta_model(
        probs[:, :500], labels[:500], meta_candidates((0.1,), "full"), cv=3, seed=0
    )
    assert chosen == "full C=0.1" and scores == {}


def test_candidates_follow_the_meta_model_option():
    assert list(meta_candidates((0.01, 0.1), "auto")) == ["full C=0.01", "full C=0.1", "tied"]
    assert list(meta_candidates((0.01, 0.1), "full")) == ["full C=0.01", "full C=0.1"]
    assert list(meta_candidates((0.01, 0.1), "tied")) == ["tied"]
    with pytest.raises(ValueError, match="auto, full, tied"):
        meta_candidates((0.01,), "forest")
