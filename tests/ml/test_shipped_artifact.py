"""The committed artifact loads, verifies its checksums and reproduces what training measured."""

import numpy as np
import pytest

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


def test_shipped_artifact_reproduces_manifest_accuracy(shipped, fmnist):
    head = shipped.manifest["metrics"]["test"]["head"]
    n = head["n"]
    assert n == 1000
    images, labels = fmnist.test_images[:n], fmnist.test_labels[:n]
    for strategy, expected in head["accuracy"].items():
        probs, _, _ = predict_all(shipped.ensembles[strategy], images)
        accuracy = float(np.mean(probs.argmax(axis=1) == labels))
        # float32 kernels differ slightly across CPUs: allow two images to flip, no more
        assert accuracy == pytest.approx(expected, abs=2 / n), strategy


def test_shipped_stacking_answers_with_its_meta_model(shipped, fmnist):
    result = shipped.predict("stacking", to_tensor(fmnist.test_images[:16]))
    assert result.fallback is None and result.degraded == []
