"""The OOD benchmark's sets and metric: fit and evaluation never share an image, the sets are
reproducible, and the AUROC is oriented with OOD as the positive class."""

from __future__ import annotations

import numpy as np
import pytest

from bench.ood import auroc
from ensembles.abstention import EVAL_PHOTOS, FAMILIES, FIT_PHOTOS, digit_images, ood_uploads
from models.preprocess import PreprocessError, analyse


@pytest.fixture(scope="module")
def sets() -> dict[str, list[tuple[str, bytes]]]:
    return {split: ood_uploads(split, 4) for split in ("fit", "eval")}


def test_fit_and_evaluation_sets_share_no_image(sets):
    fit = {data for _, data in sets["fit"]}
    assert len(fit) == len(sets["fit"]) == 4 * len(FAMILIES)
    assert not fit & {data for _, data in sets["eval"]}
    assert not set(FIT_PHOTOS) & set(EVAL_PHOTOS)


def test_digits_come_from_disjoint_indices():
    """Even indices fit, odd ones evaluate: with every digit drawn, no two images coincide."""
    from sklearn.datasets import load_digits

    n = len(load_digits().images)
    fit, evaluate = digit_images("fit", n, seed=1), digit_images("eval", n, seed=1)
    assert len(fit) == (n + 1) // 2 and len(evaluate) == n // 2


def test_sets_are_reproducible(sets):
    assert ood_uploads("eval", 4) == sets["eval"]
    with pytest.raises(ValueError):
        ood_uploads("test", 1)


def test_uploads_go_through_the_real_preprocessing(sets):
    """Digits and photos all reach the models; a generated image may be rejected (a shape the
    grey of its ground, structureless noise, a gradient with no edge), as its upload would be."""
    accepted = {family: 0 for family in FAMILIES}
    for family, data in sets["eval"]:
        try:
            analyse(data)
        except PreprocessError:
            assert family in ("shapes", "noise", "gradients"), family
            continue
        accepted[family] += 1
    assert accepted["digits"] == accepted["photos"] == 4
    assert accepted["shapes"] >= 1 and accepted["gradients"] >= 1


def test_auroc_is_oriented_with_ood_positive():
    inside, outside = np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8])
    assert auroc(inside, outside) == 1.0
    assert auroc(outside, inside) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
