"""Artifacts verify at load: corrupt weights are a clear error, versions are never paths."""

import json

import pytest

from ensembles.bundle import load_bundle
from models.manifest import Manifest, ManifestError
from models.registry import (
    BLEND_FILE,
    DEFAULT_FILE,
    MANIFEST,
    MEMBERS_FILE,
    ArtifactError,
    list_versions,
    load_artifact,
    resolve_version,
    sha256_file,
)


def test_manifest_records_every_file_sha256(tiny_root):
    path = tiny_root / "tiny"
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "members.safetensors",
        "meta.safetensors",
        BLEND_FILE,
        "gallery.safetensors",
    }
    for name, digest in manifest["files"].items():
        assert sha256_file(path / name) == digest


def test_nothing_is_a_pickle(tiny_root):
    for file in (tiny_root / "tiny").iterdir():
        assert file.suffix in {".safetensors", ".json"}
        assert not file.read_bytes().startswith(b"\x80")  # pickle protocol marker


def test_corrupt_member_weights_are_a_clear_error(tiny_copy):
    path = tiny_copy / "tiny" / MEMBERS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_bundle("tiny", root=tiny_copy)


def test_missing_member_weights_are_a_clear_error(tiny_copy):
    (tiny_copy / "tiny" / MEMBERS_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact("tiny", root=tiny_copy)


@pytest.mark.parametrize("version", ["../tiny", "/etc/passwd", "tiny/../tiny", "nope", ""])
def test_unknown_or_path_like_versions_are_refused(tiny_root, version):
    with pytest.raises(ArtifactError, match="unknown model version"):
        resolve_version(version, tiny_root)


def test_newest_version_is_the_default(tiny_copy):
    manifest_path = tiny_copy / "tiny" / MANIFEST
    older = tiny_copy / "older"
    older.mkdir()
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = "2000-01-01T00:00:00+00:00"
    (older / MANIFEST).write_text(json.dumps(manifest))
    assert list_versions(tiny_copy) == ["older", "tiny"]
    assert resolve_version(None, tiny_copy) == "tiny"
    # A DEFAULT file names the repository's choice; a stale or hostile one is ignored.
    (tiny_copy / DEFAULT_FILE).write_text("older\n")
    assert resolve_version(None, tiny_copy) == "older"
    for stale in ("gone", "../tiny", ""):
        (tiny_copy / DEFAULT_FILE).write_text(stale)
        assert resolve_version(None, tiny_copy) == "tiny"


def test_empty_root_says_to_train(tmp_path):
    with pytest.raises(ArtifactError, match="make train"):
        load_artifact(root=tmp_path)


def test_manifest_parses_into_dataclasses(tiny_root):
    raw = json.loads((tiny_root / "tiny" / MANIFEST).read_text())
    info = Manifest.from_dict(raw)
    assert info.raw is raw and info.version == "tiny" and info.members_from is None
    assert info.strategies.boosting.alphas == tuple(raw["strategies"]["boosting"]["alphas"])
    assert info.strategies.cascade.members[0] in info.members
    assert info.blend.members == info.member_names and info.blend.dtype == "float32"
    assert (
        info.members["bagging-0"].test.accuracy == raw["members"]["bagging-0"]["test"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("classes",), "T-shirt", "classes must be a list"),
        (("strategies", "bagging"), None, "bagging is missing"),
        (("strategies", "boosting", "alphas"), [1.0], "alphas must be"),
        (("strategies", "stacking", "best_member"), "nobody", "not one of its members"),
        (("strategies", "cascade", "members"), ["bagging-0", "ghost"], "unknown members"),
        (("strategies", "cascade", "threshold"), 1.5, "threshold must be in"),
        (("members", "bagging-0", "val_accuracy"), "high", "must be a number"),
    ],
)
def test_malformed_manifest_is_an_artifact_error(tiny_copy, path, value, message):
    manifest_path = tiny_copy / "tiny" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message) as caught:
        load_bundle("tiny", root=tiny_copy)
    assert isinstance(caught.value, ArtifactError)
