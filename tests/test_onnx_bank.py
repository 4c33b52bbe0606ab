"""The ONNX Runtime member bank: torch's outputs to 1e-5, a verified cache, and the fallbacks.

Every fault is injected into a real exported graph or its record: flipped bytes, a record for
other weights, a well-formed graph of the wrong members. ``RUNTIME=auto`` then serves torch
(and says why in the log), ``RUNTIME=onnx`` refuses. The shipped-artifact accuracy test runs
again here over the ONNX bank, so the new runtime reproduces every figure in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ensembles.bundle import build_bundle
from models.banks import TorchBank
from models.data import load_fashion_mnist
from models.onnx_bank import GraphCache, OnnxBank, OnnxBankError, export_graph, member_bank
from models.registry import MEMBERS_FILE, load_artifact
from tests.ml import test_shipped_artifact as shipped_tests
from views.context import EXTENSION

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def artifact():
    return load_artifact()


@pytest.fixture(scope="module")
def torch_bank(artifact) -> TorchBank:
    bank = member_bank(artifact, "torch")
    assert isinstance(bank, TorchBank)
    return bank


@pytest.fixture(scope="module")
def exported(artifact, tmp_path_factory) -> Path:
    """A cache holding the graph over every member, exported once for this module."""
    root = tmp_path_factory.mktemp("onnx-cache")
    assert isinstance(member_bank(artifact, "onnx", cache_dir=root), OnnxBank)
    return root


@pytest.fixture(scope="module")
def onnx_bank(artifact, exported) -> OnnxBank:
    bank = member_bank(artifact, "onnx", cache_dir=exported)
    assert isinstance(bank, OnnxBank)
    return bank


@pytest.fixture
def cache_copy(exported, tmp_path) -> Path:
    """A private copy of the exported cache that a test may corrupt."""
    shutil.copytree(exported, tmp_path / "cache")
    return tmp_path / "cache"


def _record(cache: Path) -> tuple[Path, dict]:
    """The record of the graph over every member (other tests add subsets' records)."""
    artifact = load_artifact()
    names = member_bank(artifact, "torch").names
    path = GraphCache(cache, artifact.manifest["files"][MEMBERS_FILE]).record_path(names)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("batch", [1, 64])
def test_every_member_and_subsets_equal_torch(onnx_bank, torch_bank, batch):
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    names = onnx_bank.names
    subsets = [names, names[:5], names[5:], names[2:3], (names[7], names[0], names[4])]
    for subset in subsets:
        got = onnx_bank.select(subset).probabilities(x)
        want = torch_bank.select(subset).probabilities(x)
        assert got.shape == (len(subset), batch, 10) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE, err_msg=str(subset))


def test_a_permutation_reuses_the_session_of_its_members(onnx_bank):
    names = onnx_bank.names
    onnx_bank.select(names[::-1]).probabilities(torch.zeros(1, 1, 28, 28))
    assert tuple(names) in onnx_bank._sessions and tuple(names[::-1]) not in onnx_bank._sessions
    with pytest.raises(KeyError, match="no member named nobody"):
        onnx_bank.select(["nobody"])


def test_an_empty_batch_answers_no_rows(onnx_bank):
    assert onnx_bank.probabilities(torch.zeros(0, 1, 28, 28)).shape == (9, 0, 10)


def test_the_cache_is_keyed_by_the_weights_sha256(artifact, exported):
    path, record = _record(exported)
    digest = artifact.manifest["files"][MEMBERS_FILE]
    assert path.parent.name == digest == record["weights_sha256"]
    assert record["members"] == list(member_bank(artifact, "torch").names)
    assert (path.parent / f"{record['onnx_sha256']}.onnx").is_file()


def _flip_graph_bytes(cache: Path) -> None:
    path, record = _record(cache)
    graph = path.parent / f"{record['onnx_sha256']}.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))


def _record_for_other_weights(cache: Path) -> None:
    path, record = _record(cache)
    path.write_text(json.dumps(dict(record, weights_sha256="0" * 64)))


def _graph_of_other_members(cache: Path) -> None:
    """A well-formed graph with a matching hash in its record, but of the wrong weights: only
    the probe check against torch can tell."""
    path, record = _record(cache)
    members = load_artifact().members
    names = record["members"]
    swapped = [members[names[(i + 1) % len(names)]] for i in range(len(names))]
    data = export_graph(swapped, member_bank(load_artifact(), "torch").cnn)
    digest = hashlib.sha256(data).hexdigest()
    (path.parent / f"{digest}.onnx").write_bytes(data)
    path.write_text(json.dumps(dict(record, onnx_sha256=digest)))


FAULTS = {
    "flipped bytes": (_flip_graph_bytes, "does not match the sha256"),
    "other weights": (_record_for_other_weights, "is for other weights"),
    "wrong members": (_graph_of_other_members, "differ from the torch members"),
    "unreadable record": (lambda c: _record(c)[0].write_text("{not json"), "unreadable"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_cached_graph_falls_back_to_torch_under_auto(artifact, cache_copy, caplog, fault):
    corrupt, message = FAULTS[fault]
    corrupt(cache_copy)
    with caplog.at_level(logging.WARNING, logger="models.onnx_bank"):
        bank = member_bank(artifact, "auto", cache_dir=cache_copy)
    assert isinstance(bank, TorchBank)
    assert any("served by torch" in r.message and message in r.message for r in caplog.records)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_cached_graph_is_refused_under_onnx(artifact, cache_copy, fault):
    corrupt, message = FAULTS[fault]
    corrupt(cache_copy)
    with pytest.raises(OnnxBankError, match=message):
        member_bank(artifact, "onnx", cache_dir=cache_copy)


def test_a_bad_subset_graph_is_served_by_torch_under_auto(artifact, cache_copy, torch_bank):
    """A member set first selected after start-up (a created ensemble) whose cached graph is
    corrupt: auto serves that set by torch, the others stay on ONNX Runtime."""
    bank = member_bank(artifact, "auto", cache_dir=cache_copy)
    subset = bank.names[:2]
    cache = GraphCache(cache_copy, artifact.manifest["files"][MEMBERS_FILE])
    record = cache.record_path(subset)
    record.write_text(json.dumps({"weights_sha256": "f" * 64, "members": [], "onnx_sha256": ""}))
    x = torch.randn(3, 1, 28, 28)
    got = bank.select(subset).probabilities(x)
    np.testing.assert_allclose(got, torch_bank.select(subset).probabilities(x), atol=TOLERANCE)
    assert bank._sessions[tuple(subset)] is None and bank._sessions[bank.names] is not None
    strict = member_bank(artifact, "onnx", cache_dir=cache_copy)
    with pytest.raises(OnnxBankError, match="is for other weights"):
        strict.select(subset).probabilities(x)


def test_an_unwritable_cache_keeps_the_graph_in_memory(artifact, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="models.onnx_bank"):
        bank = member_bank(artifact, "onnx", cache_dir=blocker)
    assert isinstance(bank, OnnxBank)
    assert any("not writable" in r.message for r in caplog.records)


def test_runtime_torch_and_unknown_runtimes(artifact, exported):
    assert isinstance(member_bank(artifact, "torch", cache_dir=exported), TorchBank)
    with pytest.raises(ValueError, match="RUNTIME must be one of"):
        member_bank(artifact, "tensorrt")


def test_the_app_serves_members_through_the_runtime_it_is_told(make_app, exported, cache_copy):
    onnx_app = make_app(BUNDLE=None, RUNTIME="auto", ONNX_CACHE_DIR=str(exported))
    torch_app = make_app(BUNDLE=None, RUNTIME="torch")
    for app, kind in ((onnx_app, OnnxBank), (torch_app, TorchBank)):
        assert isinstance(app.extensions[EXTENSION].models.bundle.bank, kind)
    _flip_graph_bytes(cache_copy)
    refused = make_app(BUNDLE=None, RUNTIME="onnx", ONNX_CACHE_DIR=str(cache_copy))
    models = refused.extensions[EXTENSION].models
    assert models.bundle is None and "does not match the sha256" in models.error
    assert refused.test_client().get("/readyz").status_code == 503


def test_an_unknown_runtime_refuses_to_start(monkeypatch, make_app):
    from app import ConfigError

    monkeypatch.setenv("RUNTIME", "tpu")
    with pytest.raises(ConfigError, match="RUNTIME must be one of auto, onnx, torch"):
        make_app()


# The shipped-artifact tests again, over the ONNX bank: same artifact, same manifest figures.
@pytest.fixture(scope="module")
def shipped(artifact, exported):
    bundle = build_bundle(artifact, bank=member_bank(artifact, "onnx", cache_dir=exported))
    assert isinstance(bundle.bank, OnnxBank)
    return bundle


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


test_onnx_reproduces_manifest_accuracy = (
    shipped_tests.test_shipped_artifact_reproduces_manifest_accuracy
)
test_onnx_cascade_reproduces_its_record = (
    shipped_tests.test_shipped_cascade_predict_reproduces_its_record
)
test_onnx_stacking_answers_with_its_meta_model = (
    shipped_tests.test_shipped_stacking_answers_with_its_meta_model
)
