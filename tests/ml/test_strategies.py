"""Each strategy trains on a small subset and predicts; stacking never fits on seen images."""

import json
import subprocess

import numpy as np
import pytest

from ensembles.bagging import Bagging
from ensembles.boosting import Boosting, BoostingError
from ensembles.members import MemberFactory
from ensembles.stacking import Stacking
from ensembles.train import code_revision
from ensembles.trainer import TrainConfig
from models.cnn import CNNConfig
from models.tensor import to_tensor


@pytest.fixture(scope="module")
def factory():
    return MemberFactory(CNNConfig(stages=(4, 8)), TrainConfig(epochs=2, batch_size=64), seed=1)


def test_bagging_draws_bootstrap_samples(fmnist, factory):
    fit_idx = np.arange(100, 500)
    bag = Bagging(2, factory=factory, classes=fmnist.classes)
    bag.fit(fmnist.train_images, fmnist.train_labels, fit_idx)
    for used in bag.train_indices_:
        assert set(used) <= set(fit_idx)
        # a bootstrap of n draws holds about 63% distinct items, never all of them here
        assert 0.5 * len(fit_idx) < len(used) < 0.75 * len(fit_idx)
    assert not np.array_equal(bag.train_indices_[0], bag.train_indices_[1])
    result = bag.predict(to_tensor(fmnist.test_images[:8]))
    assert result.probabilities.shape == (8, 10)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(result.probabilities, result.member_probabilities.mean(axis=0))


def test_tiny_training_run_beats_chance(bundle):
    """The session's tiny CLI run (1,000 images, 2 epochs) learned something real."""
    test = bundle.manifest["metrics"]["test"]
    for name, metrics in test["strategies"].items():
        assert metrics["accuracy"] > 0.3, name  # chance is 0.1
    assert set(test["members"]) == set(bundle.manifest["members"])


def test_every_strategy_predicts_a_distribution(bundle, fmnist):
    x = to_tensor(fmnist.test_images[:4])
    for strategy in ("bagging", "boosting", "stacking"):
        result = bundle.predict(strategy, x)
        assert result.probabilities.shape == (4, 10)
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
        assert result.fallback is None and result.degraded == []
        votes = result.members_for(0)
        assert [v["name"] for v in votes] == result.member_names
        assert all(0 <= v["confidence"] <= 1 and v["label"] in bundle.classes for v in votes)


def test_boosting_alphas_follow_samme(bundle):
    spec = bundle.manifest["strategies"]["boosting"]
    for alpha, err in zip(spec["alphas"], spec["weighted_errors"], strict=True):
        expected = spec["learning_rate"] * (np.log((1 - err) / err) + np.log(9))
        assert alpha == pytest.approx(expected)
        assert 0 < err < 0.9


def test_boosting_prediction_is_alpha_weighted(bundle, fmnist):
    boosting = bundle.ensembles["boosting"]
    result = boosting.predict(to_tensor(fmnist.test_images[:6]))
    alphas = np.asarray(boosting.alphas_)
    expected = np.tensordot(alphas / alphas.sum(), result.member_probabilities, axes=1)
    np.testing.assert_allclose(result.probabilities, expected)
    np.testing.assert_allclose(result.weights, alphas)


def test_boosting_first_member_worse_than_chance_is_an_error(fmnist, factory, monkeypatch):
    import ensembles.boosting as boosting_module

    # a member that always answers class 0 has weighted error 0.9 = 1 - 1/K on balanced data
    def always_zero(bank, images, **kwargs):
        probs = np.zeros((1, len(images), 10))
        probs[..., 0] = 1.0
        return probs

    monkeypatch.setattr(boosting_module, "member_probabilities", always_zero)
    idx = np.concatenate([np.flatnonzero(fmnist.train_labels == c)[:10] for c in range(10)])
    booster = Boosting(2, factory=factory, classes=fmnist.classes)
    with pytest.raises(BoostingError, match="no better than chance"):
        booster.fit(fmnist.train_images, fmnist.train_labels, idx)


def test_stacking_refuses_blend_images_members_trained_on(fmnist, factory):
    bag = Bagging(2, factory=factory, classes=fmnist.classes)
    bag.fit(fmnist.train_images, fmnist.train_labels, np.arange(300))
    stack = Stacking(factory=factory, classes=fmnist.classes)
    stack.set_members(bag.members_, bag.member_names_)
    overlapping = np.arange(250, 450)  # some of 250..299 are in the bootstraps
    with pytest.raises(ValueError, match="did not train on"):
        stack.fit(fmnist.train_images, fmnist.train_labels, overlapping, bag.train_indices_)
    stack.fit(fmnist.train_images, fmnist.train_labels, np.arange(300, 500), bag.train_indices_)
    assert stack.meta_ is not None and len(stack.member_val_accuracy_) == 2


def test_cli_run_keeps_blend_and_test_out_of_training(tiny_root):
    manifest = json.loads((tiny_root / "tiny" / "manifest.json").read_text())
    data = manifest["data"]
    assert data["fit_size"] + data["blend_size"] == 1000
    meta = manifest["strategies"]["stacking"]["meta"]
    assert meta["fitted_on"].startswith("blend split")
    assert meta["candidates"] == "auto" and set(meta["cv_log_loss"]) == {
        "full C=0.003",
        "full C=0.01",
        "full C=0.03",
        "tied",
    }
    assert meta["chosen"] == min(meta["cv_log_loss"], key=meta["cv_log_loss"].get)
    assert manifest["strategies"]["stacking"]["members"] == (
        manifest["strategies"]["bagging"]["members"] + manifest["strategies"]["boosting"]["members"]
    )
    assert manifest["metrics"]["photo_like"]["n"] == 40
    assert manifest["environment"]["torch"].split("+")[0] == pinned("torch")


def pinned(package: str) -> str:
    """The version requirements.txt pins: an outside record, not what this process reports."""
    from pathlib import Path

    for line in (Path(__file__).resolve().parents[2] / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{package} is not pinned")


def test_manifest_names_the_code_that_trained_it(tiny_root):
    manifest = json.loads((tiny_root / "tiny" / "manifest.json").read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert manifest["code"]["commit"] == head
    assert isinstance(manifest["code"]["dirty"], bool)


def test_code_revision_outside_git_is_unknown(tmp_path):
    assert code_revision(tmp_path) == {"commit": None, "dirty": None}
