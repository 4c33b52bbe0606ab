"""The committed artifact loads, verifies its checksums and reproduces what training measured."""

import pytest

from ensembles.bundle import STRATEGIES, load_bundle
from ensembles.evaluate import evaluate_ensembles
from models.data import to_tensor
from models.registry import list_versions, load_artifact, sha256_file


@pytest.fixture(scope="module")
def shipped():
    return load_bundle()


def test_exactly_one_artifact_version_is_committed():
    assert len(list_versions()) == 1, "commit one artifact version; delete superseded ones"


def test_shipped_files_match_their_manifest(shipped):
    artifact = load_artifact(shipped.version)
    assert artifact.meta_error is None
    for name, digest in shipped.manifest["files"].items():
        assert sha256_file(artifact.path / name) == digest


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


def test_shipped_stacking_answers_with_its_meta_model(shipped, fmnist):
    result = shipped.predict("stacking", to_tensor(fmnist.test_images[:16]))
    assert result.fallback is None and result.degraded == []
