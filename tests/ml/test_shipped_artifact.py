"""Every committed artifact version loads, verifies its checksums and reproduces what training
measured; the repository ships two (a default and a smaller, faster one) to show a switch."""

import numpy as np
import pytest

from ensembles.bundle import STRATEGIES, load_bundle
from ensembles.evaluate import evaluate_ensembles
from models.registry import (
    BLEND_FILE,
    default_version,
    list_versions,
    load_artifact,
    resolve_version,
    sha256_file,
)
from models.tensor import to_tensor


@pytest.fixture(scope="module", params=list_versions())
def shipped(request):
    return load_bundle(request.param)


def test_two_versions_are_committed_and_the_default_is_named():
    versions = list_versions()
    assert len(versions) == 2, "ship the default and one smaller version; delete superseded ones"
    default = default_version()
    assert default in versions and resolve_version(None) == default
    sizes = {v: load_artifact(v).manifest["cnn"]["stages"] for v in versions}
    smaller = next(v for v in versions if v != default)
    assert sum(sizes[smaller]) < sum(sizes[default]), sizes


def test_shipped_files_match_their_manifest(shipped):
    artifact = load_artifact(shipped.version)
    assert artifact.meta_error is None and artifact.blend_error is None
    assert BLEND_FILE in shipped.manifest["files"]
    for name, digest in shipped.manifest["files"].items():
        assert sha256_file(artifact.path / name) == digest


def test_shipped_blend_arrays_cover_every_member(shipped):
    blend = shipped.blend
    n = shipped.manifest["data"]["blend_size"]
    assert blend is not None and blend.members == shipped.manifest_info.member_names
    assert blend.probabilities.shape == (len(blend.members), n, len(shipped.classes))
    assert blend.labels.shape == (n,)
    np.testing.assert_allclose(blend.probabilities.sum(axis=-1), 1.0, atol=1e-5)
    accuracy = (blend.probabilities.argmax(-1) == blend.labels).mean(axis=1)
    for name, acc in zip(blend.members, accuracy, strict=True):
        assert acc == pytest.approx(shipped.manifest["members"][name]["val_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_shipped_artifact_reproduces_manifest_accuracy(shipped, fmnist):
    """Every strategy and member, re-run on the whole test split, scores what training recorded."""
    recorded = shipped.manifest["metrics"]["test"]
    n = recorded["n"]
    assert n == len(fmnist.test_labels) == 10_000
    report = evaluate_ensembles(shipped.ensembles, fmnist.test_images, fmnist.test_labels)
    assert set(report["strategies"]) == set(recorded["strategies"]) == set(STRATEGIES)
    assert set(report["members"]) == set(recorded["members"])
    # float32 kernels differ slightly across CPUs: allow two images to flip, no more
    for group in ("strategies", "members"):
        for name, metrics in recorded[group].items():
            measured = report[group][name]["accuracy"]
            assert measured == pytest.approx(metrics["accuracy"], abs=2 / n), name
    cascade = recorded["strategies"]["cascade"]
    measured = report["strategies"]["cascade"]["mean_members"]
    assert measured == pytest.approx(cascade["mean_members"], abs=2 / n)


@pytest.mark.slow
def test_shipped_cascade_predict_reproduces_its_record(shipped, fmnist):
    """The serving path (one member at a time, undecided images only) on all 10,000 images."""
    recorded = shipped.manifest["metrics"]["test"]["strategies"]["cascade"]
    cascade = shipped.ensembles["cascade"]
    predictions, used = [], []
    for start in range(0, len(fmnist.test_labels), 2000):
        result = cascade.predict(to_tensor(fmnist.test_images[start : start + 2000]))
        predictions.append(result.predictions)
        used.append(result.members_used)
    n = len(fmnist.test_labels)
    accuracy = float(np.mean(np.concatenate(predictions) == fmnist.test_labels))
    assert accuracy == pytest.approx(recorded["accuracy"], abs=2 / n)
    assert float(np.concatenate(used).mean()) == pytest.approx(recorded["mean_members"], abs=2 / n)


def test_shipped_cascade_keeps_stacking_accuracy_at_a_third_of_its_flops(shipped):
    """The recorded test figures meet the cascade's target: within 0.2 points of Stacking at no
    more than a third of Stacking's FLOPs (Stacking runs every member)."""
    strategies = shipped.manifest["metrics"]["test"]["strategies"]
    cascade, stacking = strategies["cascade"], strategies["stacking"]
    assert cascade["accuracy"] >= stacking["accuracy"] - 0.002
    per_member = shipped.ensembles["cascade"].mflops_per_member
    stacking_mflops = len(shipped.manifest_info.strategies.stacking.members) * per_member
    assert cascade["mean_mflops"] <= stacking_mflops / 3
    spec = shipped.manifest_info.strategies.cascade
    assert "blend" in spec.chosen_on


def test_shipped_stacking_answers_with_its_meta_model(shipped, fmnist):
    result = shipped.predict("stacking", to_tensor(fmnist.test_images[:16]))
    assert result.fallback is None and result.degraded == []


def test_shipped_cascade_answers_with_few_members(shipped, fmnist):
    result = shipped.predict("cascade", to_tensor(fmnist.test_images[:64]))
    assert result.degraded == [] and result.members_used.shape == (64,)
    assert 1 <= result.members_used.mean() < len(shipped.ensembles["cascade"].member_names_)
