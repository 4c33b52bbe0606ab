"""Version cards: what an operator compares before activating a model version.

Read from each version's manifest alone (no weights are loaded), so listing versions stays
cheap however many are installed: test metrics per strategy, file sizes, when and from which
commit it was trained, the CNN's shape and cost, and the forward times recorded for it by
``python -m bench.forward --record`` (with the CPU they were measured on).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from models.cnn import flops_per_image
from models.manifest import Manifest
from models.registry import ARTIFACT_ROOT, MANIFEST, ArtifactError, list_versions

log = logging.getLogger(__name__)

#: The manifest section ``bench.forward --record`` writes.
TIMING_SECTION = "timing"
_SCORES = ("accuracy", "nll", "ece")


def _scores(entry: Any) -> dict[str, float | None]:
    """Accuracy, NLL and ECE of one metrics entry (None where the manifest has none)."""
    entry = entry if isinstance(entry, dict) else {}
    return {
        key: float(entry[key]) if isinstance(entry.get(key), int | float) else None
        for key in _SCORES
    }


def describe(version: str, root: Path = ARTIFACT_ROOT) -> dict[str, Any]:
    """One version's card; raises ``ArtifactError`` when its manifest is unreadable."""
    path = root / version
    try:
        raw = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{version}: manifest unreadable ({exc})") from None
    info = Manifest.from_dict(raw)
    test = info.metrics.get("test") if isinstance(info.metrics, dict) else None
    strategies = (test or {}).get("strategies") or {}
    sizes = {}
    for name in info.files:
        file = path / name
        sizes[name] = file.stat().st_size if file.is_file() else None
    member_flops = flops_per_image(info.cnn)
    timing = raw.get(TIMING_SECTION)
    return {
        "version": version,
        "created_at": info.created_at,
        "data": (raw.get("data") or {}).get("source"),
        "classes": list(info.classes),
        "command": info.command,
        "code": dict(info.code),
        "members_from": info.members_from,
        "cnn": {"stages": list(info.cnn.stages), "members": len(info.member_names)},
        "mflops_per_member": round(member_flops / 1e6, 1),
        "metrics": {name: _scores(entry) for name, entry in strategies.items()},
        "test_images": (test or {}).get("n"),
        "files": sizes,
        "size_bytes": sum(size for size in sizes.values() if size is not None),
        "timing": timing if isinstance(timing, dict) else None,
    }


def describe_all(root: Path = ARTIFACT_ROOT) -> list[dict[str, Any]]:
    """Every installed version's card, newest first; unreadable ones are logged and skipped."""
    cards = []
    for version in reversed(list_versions(root)):
        try:
            cards.append(describe(version, root))
        except ArtifactError as exc:
            log.warning("version %s not listed: %s", version, exc)
    return cards
