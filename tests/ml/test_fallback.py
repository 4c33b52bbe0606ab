"""Every fault path answers: stacking falls back to its best member, failing members are dropped."""

import numpy as np
import pytest
import torch

from ensembles.base import NoMembersLeftError
from ensembles.bundle import load_bundle
from ensembles.stacking import MetaModel
from models.registry import META_FILE
from models.tensor import to_tensor


@pytest.fixture
def x(fmnist):
    return to_tensor(fmnist.test_images[:5])


def _best_member(manifest):
    """The best member as training recorded it in the manifest, not recomputed by the code
    under test; the ties the manifest could hide are checked against its accuracies."""
    best = manifest["strategies"]["stacking"]["best_member"]
    accuracy = {n: m["val_accuracy"] for n, m in manifest["members"].items()}
    assert accuracy[best] == max(accuracy.values())
    return best


def _assert_best_member_answered(result, manifest, reason_part):
    best = _best_member(manifest)
    assert result.fallback is not None
    assert result.fallback.model == best
    assert reason_part in result.fallback.reason
    index = result.member_names.index(best)
    np.testing.assert_allclose(result.probabilities, result.member_probabilities[index])


def test_meta_model_raising_falls_back(bundle, x, monkeypatch):
    def boom(self, member_probs):
        raise RuntimeError("meta-model exploded")

    monkeypatch.setattr(MetaModel, "predict_proba", boom)
    stacking = bundle.ensembles["stacking"]
    _assert_best_member_answered(stacking.predict(x), bundle.manifest, "raised RuntimeError")


@pytest.mark.parametrize(
    "bad_output",
    [
        lambda n, c: np.full((n, c), np.nan),
        lambda n, c: np.full((n, c), np.inf),
        lambda n, c: np.full((n, c), 0.5),  # rows sum to 5
        lambda n, c: -np.eye(c)[np.zeros(n, dtype=int)],  # negative
        lambda n, c: np.full((n, c + 1), 1 / (c + 1)),  # wrong shape
    ],
)
def test_meta_model_nonsense_falls_back(bundle, x, monkeypatch, bad_output):
    monkeypatch.setattr(
        MetaModel, "predict_proba", lambda self, p: bad_output(p.shape[1], p.shape[2])
    )
    stacking = bundle.ensembles["stacking"]
    _assert_best_member_answered(stacking.predict(x), bundle.manifest, "not a finite probability")


def test_missing_meta_file_falls_back(tiny_copy, x):
    (tiny_copy / "tiny" / META_FILE).unlink()
    loaded = load_bundle("tiny", root=tiny_copy)
    stacking = loaded.ensembles["stacking"]
    _assert_best_member_answered(stacking.predict(x), loaded.manifest, "meta-model file missing")


def test_meta_checksum_mismatch_falls_back(tiny_copy, x):
    path = tiny_copy / "tiny" / META_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    loaded = load_bundle("tiny", root=tiny_copy)
    stacking = loaded.ensembles["stacking"]
    _assert_best_member_answered(stacking.predict(x), loaded.manifest, "checksum mismatch")


def test_fallback_skips_a_failed_best_member(bundle, x, monkeypatch):
    stacking = bundle.ensembles["stacking"]
    best = _best_member(bundle.manifest)
    i = stacking.member_names_.index(best)
    _poison(stacking, i)
    result = stacking.predict(x)
    assert result.degraded == [best]
    assert result.fallback is not None and best in result.fallback.reason
    assert result.fallback.model != best and np.all(np.isfinite(result.probabilities))


def _poison(ensemble, index):
    """Give one member NaN weights, as a corrupt or diverged checkpoint would."""
    sd = ensemble.members_[index]
    ensemble.members_[index] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sd.items()
    }
    ensemble._bank = None
    ensemble._modules = None


@pytest.mark.parametrize("strategy", ["bagging", "boosting"])
def test_nan_member_is_dropped_and_named(bundle, x, strategy):
    ensemble = bundle.ensembles[strategy]
    healthy = ensemble.predict(x)
    dropped = ensemble.member_names_[1]
    _poison(ensemble, 1)
    result = ensemble.predict(x)
    assert result.degraded == [dropped]
    assert dropped not in result.member_names
    assert np.all(np.isfinite(result.probabilities))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    keep = [i for i, n in enumerate(healthy.member_names) if n != dropped]
    np.testing.assert_allclose(result.member_probabilities, healthy.member_probabilities[keep])


def test_raising_member_is_dropped(bundle, x, monkeypatch):
    bagging = bundle.ensembles["bagging"]
    modules = bagging.bank._member_modules()

    def fail(*args, **kwargs):
        raise RuntimeError("member crashed")

    monkeypatch.setattr(type(bagging.bank.fused), "forward", fail)  # the batched path fails first
    monkeypatch.setattr(modules[0], "forward", fail)
    result = bagging.predict(x)
    assert result.degraded == [bagging.member_names_[0]]
    assert len(result.member_names) == len(bagging.member_names_) - 1


def test_no_member_left_is_a_typed_error(bundle, x):
    bagging = bundle.ensembles["bagging"]
    for i in range(len(bagging.members_)):
        _poison(bagging, i)
    with pytest.raises(NoMembersLeftError, match="all 3 members"):
        bagging.predict(x)
