"""Artifact registry: ``models/artifacts/<version>/`` with safetensors weights and a manifest.

Every file's sha256 is recorded in ``manifest.json`` and verified at load. A bad member-weights
file is a hard error (nothing can be served without members); a missing, corrupt or mismatched
meta-model is reported as ``meta_error`` so stacking can fall back instead of failing, and a
missing or corrupt ``blend.safetensors`` (the members' blend-split probabilities, kept so
meta-models and cascade thresholds can be fitted later without the dataset) as ``blend_error``:
serving never needs it. A missing or corrupt ``abstention.json`` (the fitted uncertainty
combiner, plain JSON numbers) is reported as ``abstention_error``: answers then never abstain.
A missing or corrupt ``gallery.safetensors`` (a few held-out test images per class, as the
model sees them, shown as samples on the home page) is reported as ``gallery_error``: the page
then offers uploads only. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

log = logging.getLogger(__name__)

ARTIFACT_ROOT = Path(__file__).resolve().parent / "artifacts"
MANIFEST = "manifest.json"
#: One line naming the version served when neither an activation nor MODEL_VERSION chooses.
DEFAULT_FILE = "DEFAULT"
MEMBERS_FILE = "members.safetensors"
META_FILE = "meta.safetensors"
BLEND_FILE = "blend.safetensors"
#: The fitted uncertainty combiner and abstention threshold (``ensembles.uncertainty``).
ABSTENTION_FILE = "abstention.json"
#: Arrays of the blend file: probabilities (K, N, C) in ``manifest["blend"]["members"]`` order,
#: the blend labels and the blend images' positions in the training set.
BLEND_ARRAYS = ("probabilities", "labels", "indices")
#: Held-out (test-split) images per class, kept so a version can show its own samples.
GALLERY_FILE = "gallery.safetensors"
#: Arrays of the gallery file: images (N, 28, 28) uint8 as the model sees them, their label
#: indices (N,) and their positions in the test split (N,).
GALLERY_ARRAYS = ("images", "labels", "indices")
GALLERY_SHAPE = (28, 28)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ArtifactError(RuntimeError):
    """The artifact cannot be served: missing, unreadable, or its members fail verification."""


@dataclass
class Artifact:
    """What a version directory holds, verified."""

    version: str
    path: Path
    manifest: dict
    members: dict[str, dict[str, torch.Tensor]]
    meta_arrays: dict[str, np.ndarray] | None
    meta_error: str | None
    #: The members' blend-split probabilities, labels and indices (``BLEND_ARRAYS``), or None
    #: with ``blend_error`` saying why (older artifacts have none; serving never needs them).
    blend: dict[str, np.ndarray] | None = None
    blend_error: str | None = None
    #: The abstention combiner's JSON (``ensembles.uncertainty.Abstainer``), or None with
    #: ``abstention_error`` saying why: then every answer is given without abstaining.
    abstention: dict | None = None
    abstention_error: str | None = None
    #: The held-out sample images and labels (``GALLERY_ARRAYS``), or None with
    #: ``gallery_error`` saying why (older artifacts have none; serving never needs them).
    gallery: dict[str, np.ndarray] | None = None
    gallery_error: str | None = None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_versions(root: Path = ARTIFACT_ROOT) -> list[str]:
    """Versions with a manifest, oldest first (by the manifest's ``created_at``)."""
    found = []
    for manifest in root.glob(f"*/{MANIFEST}"):
        try:
            created = json.loads(manifest.read_text())["created_at"]
        except (OSError, ValueError, KeyError):
            log.warning("ignoring %s: unreadable manifest", manifest.parent)
            continue
        found.append((created, manifest.parent.name))
    return [name for _, name in sorted(found)]


def default_version(root: Path = ARTIFACT_ROOT) -> str | None:
    """The version ``root/DEFAULT`` names (the repository's choice among several), if valid."""
    try:
        named = (root / DEFAULT_FILE).read_text().strip()
    except OSError:
        return None
    if _VERSION_RE.match(named) and (root / named / MANIFEST).is_file():
        return named
    log.warning("%s names %r, which is not an installed version; using the newest", root, named)
    return None


def resolve_version(version: str | None, root: Path = ARTIFACT_ROOT) -> str:
    """The requested version if it exists, else the default (``DEFAULT``, else the newest);
    never a free-form path."""
    versions = list_versions(root)
    if not versions:
        raise ArtifactError(f"no trained artifacts under {root}; run `make train`")
    if version is None:
        named = default_version(root)
        return named if named in versions else versions[-1]
    if not _VERSION_RE.match(version) or version not in versions:
        raise ArtifactError(f"unknown model version {version!r}; available: {', '.join(versions)}")
    return version


def save_artifact(
    root: Path,
    version: str,
    manifest: dict,
    members: dict[str, dict[str, torch.Tensor]],
    meta_arrays: dict[str, np.ndarray] | None,
    blend_arrays: dict[str, np.ndarray] | None = None,
    gallery_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write weights, meta-model, blend and gallery arrays and a manifest listing every
    file's sha256."""
    if not _VERSION_RE.match(version):
        raise ValueError(f"bad version name {version!r}")
    path = root / version
    path.mkdir(parents=True, exist_ok=False)
    flat = {
        f"{name}/{key}": tensor.detach().cpu().contiguous().clone()
        for name, state in members.items()
        for key, tensor in state.items()
    }
    save_torch(flat, str(path / MEMBERS_FILE))
    files = [MEMBERS_FILE]
    if meta_arrays is not None:
        save_numpy(
            {k: np.ascontiguousarray(v) for k, v in meta_arrays.items()}, str(path / META_FILE)
        )
        files.append(META_FILE)
    for file, arrays, names in (
        (BLEND_FILE, blend_arrays, BLEND_ARRAYS),
        (GALLERY_FILE, gallery_arrays, GALLERY_ARRAYS),
    ):
        if arrays is None:
            continue
        if set(arrays) != set(names):
            raise ValueError(f"the arrays of {file} must be exactly {names}")
        save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / file))
        files.append(file)
    manifest = dict(manifest, version=version)
    manifest["files"] = {name: sha256_file(path / name) for name in files}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _unverified(file: Path, expected: str | None, what: str, made: str = "training") -> str | None:
    """Why an optional file cannot be used (not listed, missing, changed), or None if intact."""
    if expected is None:
        return f"{what} not listed in the manifest"
    if not file.is_file():
        return f"{what} missing"
    if sha256_file(file) != expected:
        return f"{what} checksum mismatch (file changed since {made})"
    return None


def _load_arrays(
    file: Path, expected: str | None, what: str, names: tuple[str, ...] | None = None
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """A listed, intact numpy safetensors file (holding exactly ``names``), else why not."""
    error = _unverified(file, expected, what)
    if error:
        return None, error
    try:
        arrays = load_numpy(str(file))
    except Exception as exc:  # safetensors raises its own error types
        return None, f"{what} unreadable: {exc}"
    if names is not None and set(arrays) != set(names):
        return None, f"{what} holds {sorted(arrays)}, expected {list(names)}"
    return arrays, None


def _load_meta(path: Path, expected: str | None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The meta-model's arrays if listed and intact, else why not (stacking then falls back)."""
    return _load_arrays(path / META_FILE, expected, "meta-model file")


def _load_blend(
    path: Path, expected: str | None, manifest: dict
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The blend arrays if listed, intact and consistent with the manifest, else why not."""
    arrays, error = _load_arrays(path / BLEND_FILE, expected, "blend file", BLEND_ARRAYS)
    if arrays is None:
        return None, error
    probs, labels, indices = (arrays[k] for k in BLEND_ARRAYS)
    names = (manifest.get("blend") or {}).get("members") or []
    n_classes = len(manifest.get("classes") or [])
    if (
        probs.ndim != 3
        or probs.shape[0] != len(names)
        or probs.shape[2] != n_classes
        or labels.shape != (probs.shape[1],)
        or indices.shape != labels.shape
    ):
        return None, (
            f"blend arrays have shapes {probs.shape}, {labels.shape}, {indices.shape}; expected "
            f"({len(names)}, N, {n_classes}), (N,), (N,)"
        )
    if not (np.all(np.isfinite(probs)) and _labels_in_range(labels, n_classes)):
        return None, "blend arrays hold non-finite probabilities or out-of-range labels"
    return arrays, None


def _labels_in_range(labels: np.ndarray, n_classes: int) -> bool:
    """Every label indexes one of the manifest's classes."""
    return bool(labels.min(initial=0) >= 0 and labels.max(initial=0) < n_classes)


def _load_gallery(
    path: Path, expected: str | None, manifest: dict
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The gallery's images and labels if listed, intact and well-formed, else why not."""
    arrays, error = _load_arrays(path / GALLERY_FILE, expected, "gallery file", GALLERY_ARRAYS)
    if arrays is None:
        return None, error
    images, labels, indices = (arrays[k] for k in GALLERY_ARRAYS)
    n_classes = len(manifest.get("classes") or [])
    if (
        images.dtype != np.uint8
        or images.ndim != 3
        or images.shape[1:] != GALLERY_SHAPE
        or labels.shape != (images.shape[0],)
        or indices.shape != labels.shape
        or labels.dtype.kind not in "iu"
    ):
        return None, (
            f"gallery arrays are {images.dtype} {images.shape}, {labels.dtype} {labels.shape}, "
            f"{indices.shape}; expected uint8 (N, 28, 28), integer (N,), (N,)"
        )
    if not _labels_in_range(labels, n_classes):
        return None, f"gallery labels fall outside the {n_classes} classes"
    return arrays, None


def _load_abstention(path: Path, expected: str | None) -> tuple[dict | None, str | None]:
    """The abstention combiner's JSON if listed and intact, else why not (never raises)."""
    file = path / ABSTENTION_FILE
    error = _unverified(file, expected, "abstention file", made="it was fitted")
    if error:
        return None, error
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        return None, f"abstention file unreadable: {exc}"
    if not isinstance(raw, dict):
        return None, "abstention file does not hold a JSON object"
    return raw, None


def load_artifact(version: str | None = None, root: Path = ARTIFACT_ROOT) -> Artifact:
    """Load and verify one version (default: the newest)."""
    version = resolve_version(version, root)
    path = root / version
    manifest = json.loads((path / MANIFEST).read_text())
    files = manifest.get("files", {})
    members_file = path / MEMBERS_FILE
    if not members_file.is_file():
        raise ArtifactError(f"{members_file} is missing; re-run `make train` or restore the file")
    if sha256_file(members_file) != files.get(MEMBERS_FILE):
        raise ArtifactError(
            f"{members_file} does not match the sha256 in its manifest; the weights are corrupt "
            "or were changed after training"
        )
    flat = load_torch(str(members_file))
    members: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        name, _, param = key.partition("/")
        members.setdefault(name, {})[param] = tensor
    meta_arrays, meta_error = _load_meta(path, files.get(META_FILE))
    if meta_error:
        log.warning(
            "artifact %s: %s; stacking will fall back to its best member", version, meta_error
        )
    blend, blend_error = _load_blend(path, files.get(BLEND_FILE), manifest)
    if blend_error and BLEND_FILE in files:
        log.warning("artifact %s: %s; serving is unaffected", version, blend_error)
    abstention, abstention_error = _load_abstention(path, files.get(ABSTENTION_FILE))
    if abstention_error:
        log.warning("artifact %s: %s; answers will not abstain", version, abstention_error)
    gallery, gallery_error = _load_gallery(path, files.get(GALLERY_FILE), manifest)
    if gallery_error and GALLERY_FILE in files:
        log.warning("artifact %s: %s; no stored sample images", version, gallery_error)
    return Artifact(
        version,
        path,
        manifest,
        members,
        meta_arrays,
        meta_error,
        blend,
        blend_error,
        abstention,
        abstention_error,
        gallery,
        gallery_error,
    )


def record_file(path: Path, name: str, payload: bytes, section: str, record: dict) -> str:
    """Add (or replace) one file of an existing artifact: write it, list its sha256 in the
    manifest and keep how it was made under ``manifest[section]``; returns the sha256."""
    if name in (MEMBERS_FILE, META_FILE, BLEND_FILE, GALLERY_FILE, MANIFEST) or "/" in name:
        raise ValueError(f"{name!r} cannot be replaced this way")
    manifest_path = path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    target = path / name
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(payload)
    partial.replace(target)
    digest = sha256_file(target)
    manifest.setdefault("files", {})[name] = digest
    manifest[section] = dict(record, file=name)
    _write_manifest(manifest_path, manifest)
    return digest


def record_section(path: Path, section: str, record: dict) -> None:
    """Keep a measurement of an existing artifact (no file of its own) in ``manifest[section]``."""
    if section in ("files", "version", "members", "strategies", "cnn", "classes", "metrics"):
        raise ValueError(f"manifest section {section!r} is written by training only")
    manifest_path = path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest[section] = record
    _write_manifest(manifest_path, manifest)


def _write_manifest(manifest_path: Path, manifest: dict) -> None:
    """Replace the manifest atomically: a reader sees the old one or the new one, never half."""
    partial = manifest_path.with_name(MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    partial.replace(manifest_path)
