"""The artifact manifest as frozen dataclasses, so code reads named fields instead of dict keys.

``Manifest.from_dict`` checks the structure every consumer relies on (classes, CNN, members,
the strategies and the members they name, files) and raises ``ManifestError`` — an
``ArtifactError``, so a malformed manifest stops a load like a corrupt file does. The parsed
dict stays available as ``Manifest.raw`` for readers of fields not modelled here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.cnn import CNNConfig
from models.registry import ArtifactError


class ManifestError(ArtifactError):
    """The manifest is missing a field or holds one of the wrong type or shape."""


def _get(d: Mapping, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ManifestError(f"manifest: {where}{key} is missing")
    value = d[key]
    numeric = kind in (float, (int, float))
    if numeric and isinstance(value, bool) or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise ManifestError(f"manifest: {where}{key} must be a {name}, got {value!r:.60}")
    return value


def _names(d: Mapping, key: str, where: str) -> tuple[str, ...]:
    names = _get(d, key, list, where)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ManifestError(f"manifest: {where}{key} must be a non-empty list of distinct names")
    return tuple(names)


def _numbers(d: Mapping, key: str, where: str, n: int) -> tuple[float, ...]:
    values = _get(d, key, list, where)
    if len(values) != n or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ManifestError(f"manifest: {where}{key} must be {n} numbers")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Scores:
    """Accuracy, NLL and ECE on one split (cascades add members and MFLOP per image)."""

    accuracy: float
    nll: float | None = None
    ece: float | None = None
    mean_members: float | None = None
    mean_mflops: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> Scores:
        """Parse one metrics object; only ``accuracy`` is required."""

        def optional(key: str) -> float | None:
            return float(_get(d, key, (int, float), where)) if key in d else None

        return cls(
            accuracy=float(_get(d, "accuracy", (int, float), where)),
            nll=optional("nll"),
            ece=optional("ece"),
            mean_members=optional("mean_members"),
            mean_mflops=optional("mean_mflops"),
        )


@dataclass(frozen=True)
class MemberInfo:
    """One trained member: its blend (validation) accuracy and its test scores."""

    name: str
    val_accuracy: float
    test: Scores | None


@dataclass(frozen=True)
class BaggingSpec:
    """Bagging's members and how their probabilities combine."""

    members: tuple[str, ...]
    combine: str


@dataclass(frozen=True)
class BoostingSpec:
    """SAMME's members with their alphas, the shrinkage they were trained with and the combine."""

    members: tuple[str, ...]
    alphas: tuple[float, ...]
    learning_rate: float
    combine: str


@dataclass(frozen=True)
class StackingSpec:
    """Stacking's members (in meta-model feature order), its fallback member and meta details."""

    members: tuple[str, ...]
    best_member: str
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class CascadeSpec:
    """Cascade: members in run order, pool weights (and log-pool bias), the exit threshold and
    how it was chosen (``chosen_on`` must name the blend split, never test)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    threshold: float
    pool: str
    bias: tuple[float, ...] | None
    chosen_on: str
    rule: str | None = None
    tolerance: float | None = None
    sweep: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Strategies:
    """The built-in ensembles an artifact defines; ``cascade`` is absent in older artifacts."""

    bagging: BaggingSpec
    boosting: BoostingSpec
    stacking: StackingSpec
    cascade: CascadeSpec | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The strategies this artifact can serve, in display order."""
        base = ("bagging", "boosting", "stacking")
        return base + ("cascade",) if self.cascade is not None else base


@dataclass(frozen=True)
class BlendSpec:
    """What ``blend.safetensors`` holds: member order of its ``(K, N, C)`` probabilities."""

    members: tuple[str, ...]
    n: int
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """A verified artifact's manifest; ``raw`` is the parsed JSON it came from."""

    version: str
    format: int
    created_at: str
    command: str
    code: Mapping[str, Any]
    classes: tuple[str, ...]
    cnn: CNNConfig
    members: Mapping[str, MemberInfo]
    strategies: Strategies
    metrics: Mapping[str, Any]
    files: Mapping[str, str]
    blend: BlendSpec | None = None
    members_from: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def member_names(self) -> tuple[str, ...]:
        """Every member, in the manifest's (stacking feature) order."""
        return self.strategies.stacking.members

    def test_accuracy(self, strategy: str) -> float | None:
        """A built-in strategy's recorded test accuracy (None when the manifest has none)."""
        test = self.metrics.get("test") if isinstance(self.metrics, Mapping) else None
        strategies = test.get("strategies") if isinstance(test, Mapping) else None
        entry = strategies.get(strategy) if isinstance(strategies, Mapping) else None
        accuracy = entry.get("accuracy") if isinstance(entry, Mapping) else None
        return float(accuracy) if isinstance(accuracy, int | float) else None

    def val_accuracy(self, names: Sequence[str]) -> list[float]:
        """Blend accuracies of ``names`` in that order (stacking's fallback choice)."""
        return [self.members[name].val_accuracy for name in names]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Parse and check a manifest dict; raises ``ManifestError`` naming the bad field."""
        if not isinstance(d, Mapping):
            raise ManifestError("manifest: not a JSON object")
        classes = _names(d, "classes", "")
        try:
            cnn = CNNConfig.from_dict(_get(d, "cnn", Mapping, ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest: cnn is malformed ({exc!r})") from None
        if cnn.num_classes != len(classes):
            raise ManifestError(
                f"manifest: cnn.num_classes {cnn.num_classes} but {len(classes)} classes"
            )
        members = {}
        for name, info in _get(d, "members", Mapping, "").items():
            where = f"members.{name}."
            test = info.get("test") if isinstance(info, Mapping) else None
            members[name] = MemberInfo(
                name=name,
                val_accuracy=float(_get(info, "val_accuracy", (int, float), where)),
                test=Scores.from_dict(test, where + "test.") if test is not None else None,
            )
        strategies = _strategies(_get(d, "strategies", Mapping, ""), set(members), len(classes))
        files = _get(d, "files", Mapping, "")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ManifestError("manifest: files must map file names to sha256 strings")
        blend = None
        if d.get("blend") is not None:
            b = _get(d, "blend", Mapping, "")
            blend = BlendSpec(
                members=_names(b, "members", "blend."),
                n=int(_get(b, "n", int, "blend.")),
                dtype=str(_get(b, "dtype", str, "blend.")),
            )
        members_from = d.get("members_from")
        if members_from is not None and not isinstance(members_from, str):
            raise ManifestError("manifest: members_from must be a version name or null")
        return cls(
            version=str(d.get("version", "")),
            format=int(_get(d, "format", int, "")),
            created_at=_get(d, "created_at", str, ""),
            command=str(d.get("command", "")),
            code=d.get("code") or {},
            classes=classes,
            cnn=cnn,
            members=members,
            strategies=strategies,
            metrics=d.get("metrics") or {},
            files=dict(files),
            blend=blend,
            members_from=members_from,
            raw=d,
        )


def _known(names: tuple[str, ...], members: set[str], where: str) -> tuple[str, ...]:
    unknown = [n for n in names if n not in members]
    if unknown:
        raise ManifestError(f"manifest: {where}members names unknown members {unknown}")
    return names


def _strategies(s: Mapping, members: set[str], n_classes: int) -> Strategies:
    bag = _get(s, "bagging", Mapping, "strategies.")
    boost = _get(s, "boosting", Mapping, "strategies.")
    stack = _get(s, "stacking", Mapping, "strategies.")
    w = "strategies.bagging."
    bag_members = _known(_names(bag, "members", w), members, w)
    bagging = BaggingSpec(bag_members, _get(bag, "combine", str, w))
    w = "strategies.boosting."
    boost_members = _known(_names(boost, "members", w), members, w)
    boosting = BoostingSpec(
        members=boost_members,
        alphas=_numbers(boost, "alphas", w, len(boost_members)),
        learning_rate=float(_get(boost, "learning_rate", (int, float), w)),
        combine=_get(boost, "combine", str, w),
    )
    w = "strategies.stacking."
    stack_members = _known(_names(stack, "members", w), members, w)
    best = _get(stack, "best_member", str, w)
    if best not in stack_members:
        raise ManifestError(f"manifest: {w}best_member {best!r} is not one of its members")
    stacking = StackingSpec(stack_members, best, _get(stack, "meta", Mapping, w))
    cascade = None
    if s.get("cascade") is not None:
        c = _get(s, "cascade", Mapping, "strategies.")
        w = "strategies.cascade."
        names = _known(_names(c, "members", w), members, w)
        threshold = float(_get(c, "threshold", (int, float), w))
        if not 0.0 < threshold <= 1.0:
            raise ManifestError(f"manifest: {w}threshold must be in (0, 1], got {threshold}")
        bias = c.get("bias")
        cascade = CascadeSpec(
            members=names,
            weights=_numbers(c, "weights", w, len(names)),
            threshold=threshold,
            pool=_get(c, "pool", str, w),
            bias=None if bias is None else _numbers(c, "bias", w, n_classes),
            chosen_on=_get(c, "chosen_on", str, w),
            rule=c.get("rule"),
            tolerance=c.get("tolerance"),
            sweep=c.get("sweep") or {},
        )
    return Strategies(bagging, boosting, stacking, cascade)
