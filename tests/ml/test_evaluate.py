"""Scoring (`make evaluate`, and the end of `make train`): shared forwards, and faults survived."""

import numpy as np
import pytest

from ensembles.bagging import Bagging
from ensembles.base import Ensemble
from ensembles.evaluate import evaluate_ensembles, members_probabilities


@pytest.fixture
def images(fmnist):
    return fmnist.test_images[:64], fmnist.test_labels[:64]


def _count_forwards(monkeypatch):
    calls: list[str] = []
    forward = Ensemble.forward_members

    def counted(self, x):
        calls.append(self.strategy)
        return forward(self, x)

    monkeypatch.setattr(Ensemble, "forward_members", counted)
    return calls


def test_shared_checkpoints_run_once_and_impostors_run_their_own(bundle, images, monkeypatch):
    stacking, bagging = bundle.ensembles["stacking"], bundle.ensembles["bagging"]
    # same member names as Bagging, different weights: must not borrow Stacking's outputs
    shifted = [
        {k: v + 0.05 if v.is_floating_point() else v for k, v in sd.items()}
        for sd in bagging.members_
    ]
    impostor = Bagging(len(shifted), cnn=bagging.cnn, classes=bagging.classes)
    impostor.set_members(shifted, bagging.member_names_)
    impostor.strategy = "impostor"
    calls = _count_forwards(monkeypatch)
    probs = members_probabilities(
        {"bagging": bagging, "impostor": impostor, "stacking": stacking}, images[0]
    )
    assert sorted(calls) == ["impostor", "stacking"]  # Bagging reused Stacking's forward
    assert list(probs) == ["bagging", "impostor", "stacking"]
    np.testing.assert_array_equal(probs["bagging"], probs["stacking"][: len(shifted)])
    own = members_probabilities({"impostor": impostor}, images[0])["impostor"]
    np.testing.assert_array_equal(probs["impostor"], own)
    assert not np.allclose(probs["impostor"], probs["bagging"])


def test_scoring_survives_a_member_that_raises(bundle, images, monkeypatch):
    """A crash in one member must not throw away a finished training run at its scoring step."""
    stacking = bundle.ensembles["stacking"]
    victim = stacking.member_names_[0]

    def fail(*args, **kwargs):
        raise RuntimeError("member crashed")

    monkeypatch.setattr(type(stacking.bank.fused), "forward", fail)  # the batched path fails first
    monkeypatch.setattr(stacking.bank._member_modules()[0], "forward", fail)
    report = evaluate_ensembles({"stacking": stacking}, *images)
    assert victim not in report["members"]
    assert len(report["members"]) == len(stacking.member_names_) - 1
    assert 0.0 <= report["strategies"]["stacking"]["accuracy"] <= 1.0
