"""The committed artifact loads, verifies its checksums and reproduces what training measured."""

import numpy as np
import pytest

from ensembles.base import MemberOutputs
from ensembles.bundle import load_bundle
from ensembles.evaluate import predict_all
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
    """Every strategy, re-run on the whole test split, scores what training recorded.

    Stacking holds every member, so its one batched forward feeds all three combiners.
    """
    test = shipped.manifest["metrics"]["test"]
    n = test["n"]
    assert n == len(fmnist.test_labels) == 10_000
    _, member_probs, names = predict_all(
        shipped.ensembles["stacking"], fmnist.test_images, batch_size=128
    )
    for strategy, recorded in test["strategies"].items():
        ensemble = shipped.ensembles[strategy]
        keep = [names.index(name) for name in ensemble.member_names_]
        outputs = MemberOutputs(
            ensemble.member_names_, member_probs[keep], np.ones(len(keep), dtype=bool), []
        )
        probs = ensemble._combine(outputs).probabilities
        accuracy = float(np.mean(probs.argmax(axis=1) == fmnist.test_labels))
        # float32 kernels differ slightly across CPUs: allow two images to flip, no more
        assert accuracy == pytest.approx(recorded["accuracy"], abs=2 / n), strategy


def test_shipped_stacking_answers_with_its_meta_model(shipped, fmnist):
    result = shipped.predict("stacking", to_tensor(fmnist.test_images[:16]))
    assert result.fallback is None and result.degraded == []
