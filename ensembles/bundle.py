"""Build the served ensembles from a verified artifact; the one entry point for serving.

Bagging, Boosting and Stacking always; Cascade when the manifest defines it (artifacts trained
before it existed serve the other three). All of them share one ``TorchBank``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ensembles.bagging import Bagging
from ensembles.base import Ensemble, Result
from ensembles.boosting import Boosting
from ensembles.cascade import Cascade
from ensembles.stacking import MetaModel, Stacking
from ensembles.uncertainty import Abstainer, abstainer_from
from models.banks import MemberBank, TorchBank
from models.data import trained_on_fashion_mnist
from models.manifest import Manifest, ManifestError
from models.registry import ARTIFACT_ROOT, Artifact, load_artifact

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Ensemble)
#: Every built-in strategy; an artifact without a cascade serves the first three.
STRATEGIES = ("bagging", "boosting", "stacking", "cascade")


class UnknownStrategyError(ValueError):
    """The requested strategy is not one of the served ensembles."""


@dataclass(frozen=True)
class BlendSplit:
    """Members' probabilities on the blend split (no member trained on it), with its labels:
    what created stacking ensembles and cascades are fitted on, never test data."""

    members: tuple[str, ...]
    probabilities: np.ndarray  # (K, N, C)
    labels: np.ndarray  # (N,)


@dataclass(frozen=True)
class Gallery:
    """A few held-out (test-split) images per class, stored with the artifact: samples a
    person can try that the members never trained on."""

    images: np.ndarray  # (N, 28, 28) uint8, as the model sees them
    labels: np.ndarray  # (N,) int64 indices into the bundle's classes


@dataclass
class EnsembleBundle:
    """The ensembles of one artifact version, ready to predict."""

    version: str
    classes: tuple[str, ...]
    manifest: dict  # the raw manifest (views read it); ``manifest_info`` is the parsed one
    ensembles: dict[str, Ensemble]
    manifest_info: Manifest

    #: Every member of the artifact behind one runtime; ensembles use ``bank.select(...)``.
    bank: MemberBank
    blend: BlendSplit | None = None
    #: The fitted uncertainty combiner (None: answers never abstain).
    abstainer: Abstainer | None = None
    #: The stored sample images, or None with ``gallery_error`` saying why.
    gallery: Gallery | None = None
    gallery_error: str | None = None

    @property
    def fashion_mnist(self) -> bool:
        """Whether this version was trained on Fashion-MNIST (its test split is then a gallery)."""
        return trained_on_fashion_mnist(self.manifest)

    @property
    def strategies(self) -> tuple[str, ...]:
        """The built-in strategies this artifact serves, in ``STRATEGIES`` order."""
        return tuple(name for name in STRATEGIES if name in self.ensembles)

    def predict(self, strategy: str, x: torch.Tensor) -> Result:
        """Run one strategy on a batch of normalised images ``(N, 1, 28, 28)``."""
        try:
            ensemble = self.ensembles[strategy]
        except KeyError:
            raise UnknownStrategyError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(self.ensembles)}"
            ) from None
        return ensemble.predict(x)

    def warm_up(self) -> None:
        """Build the fused banks and run one image through each, so requests never pay for it."""
        x = torch.zeros(1, 1, 28, 28)
        for ensemble in self.ensembles.values():
            if isinstance(ensemble, Cascade):
                ensemble.warm_up()  # an easy image would build its first member only
            ensemble.predict(x)


def build_bundle(
    artifact: Artifact, device: str = "cpu", bank: MemberBank | None = None
) -> EnsembleBundle:
    """Wire an artifact's members, alphas, meta-model and cascade into its ensembles.

    ``bank`` serves the members through another runtime (or a test fake) instead of the fused
    CNN over the artifact's weights; the ensembles only ever see the bank."""
    info = Manifest.from_dict(artifact.manifest)
    spec = info.strategies
    names = list(info.member_names)
    if bank is None:
        missing = [name for name in names if name not in artifact.members]
        if missing:
            raise ManifestError(f"manifest names members {missing} absent from the weights file")
        bank = TorchBank([artifact.members[name] for name in names], names, info.cnn, device)
    elif sorted(bank.names) != sorted(names):
        raise ManifestError(f"the bank serves {bank.names}, the manifest names {names}")
    shared = bank
    common = {"classes": info.classes, "cnn": info.cnn, "device": device}

    def wire(ensemble: E, members: tuple[str, ...]) -> E:
        view = shared.select(members)
        if all(name in artifact.members for name in members):
            ensemble.set_members([artifact.members[n] for n in members], list(members), view)
        else:
            ensemble.use_bank(view)
        return ensemble

    bagging = wire(
        Bagging(n_members=len(spec.bagging.members), combine=spec.bagging.combine, **common),
        spec.bagging.members,
    )
    boosting = wire(
        Boosting(
            n_members=len(spec.boosting.members),
            learning_rate=spec.boosting.learning_rate,
            combine=spec.boosting.combine,
            **common,
        ),
        spec.boosting.members,
    ).set_alphas(list(spec.boosting.alphas))
    stack_names = spec.stacking.members
    meta = None if artifact.meta_arrays is None else MetaModel.from_arrays(artifact.meta_arrays)
    stacking = wire(Stacking(**common), stack_names).set_meta(
        meta, info.val_accuracy(stack_names), error=artifact.meta_error
    )
    ensembles: dict[str, Ensemble] = {
        "bagging": bagging,
        "boosting": boosting,
        "stacking": stacking,
    }
    if spec.cascade is not None:
        c = spec.cascade
        ensembles["cascade"] = wire(
            Cascade(threshold=c.threshold, weights=c.weights, pool=c.pool, bias=c.bias, **common),
            c.members,
        )
    blend = None
    if artifact.blend is not None and info.blend is not None:
        blend = BlendSplit(
            members=info.blend.members,
            probabilities=artifact.blend["probabilities"].astype(np.float64),
            labels=artifact.blend["labels"].astype(np.int64),
        )
    gallery = None
    if artifact.gallery is not None:
        gallery = Gallery(
            images=artifact.gallery["images"], labels=artifact.gallery["labels"].astype(np.int64)
        )
    return EnsembleBundle(
        version=artifact.version,
        classes=info.classes,
        manifest=artifact.manifest,
        ensembles=ensembles,
        manifest_info=info,
        bank=bank,
        blend=blend,
        abstainer=abstainer_from(artifact.abstention, artifact.abstention_error, artifact.version),
        gallery=gallery,
        gallery_error=artifact.gallery_error,
    )


def load_bundle(
    version: str | None = None, root: Path = ARTIFACT_ROOT, device: str = "cpu"
) -> EnsembleBundle:
    """Load, verify and wire one artifact version (default: the newest)."""
    bundle = build_bundle(load_artifact(version, root), device=device)
    log.info("loaded model version %s (%s)", bundle.version, ", ".join(bundle.ensembles))
    return bundle
