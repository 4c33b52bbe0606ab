"""Build the three served ensembles from a verified artifact; the one entry point for serving."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ensembles.bagging import Bagging
from ensembles.base import Ensemble, Result
from ensembles.boosting import Boosting
from ensembles.members import MemberFactory
from ensembles.stacking import MetaModel, Stacking
from models.cnn import CNNConfig
from models.registry import ARTIFACT_ROOT, Artifact, load_artifact

log = logging.getLogger(__name__)
STRATEGIES = ("bagging", "boosting", "stacking")


class UnknownStrategyError(ValueError):
    """The requested strategy is not one of the served ensembles."""


@dataclass
class EnsembleBundle:
    """The ensembles of one artifact version, ready to predict."""

    version: str
    classes: tuple[str, ...]
    manifest: dict
    ensembles: dict[str, Ensemble]

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
            ensemble.predict(x)


def build_bundle(artifact: Artifact, device: str = "cpu") -> EnsembleBundle:
    """Wire an artifact's members, alphas and meta-model into Bagging, Boosting and Stacking."""
    manifest = artifact.manifest
    classes = tuple(manifest["classes"])
    factory = MemberFactory(cnn=CNNConfig.from_dict(manifest["cnn"]), device=device)
    spec = manifest["strategies"]

    def members(names: list[str]) -> list[dict[str, torch.Tensor]]:
        return [artifact.members[name] for name in names]

    bagging = Bagging(
        n_members=len(spec["bagging"]["members"]),
        combine=spec["bagging"]["combine"],
        factory=factory,
        classes=classes,
    ).set_members(members(spec["bagging"]["members"]), spec["bagging"]["members"])
    boosting = (
        Boosting(
            n_members=len(spec["boosting"]["members"]),
            learning_rate=spec["boosting"]["learning_rate"],
            combine=spec["boosting"]["combine"],
            factory=factory,
            classes=classes,
        )
        .set_members(members(spec["boosting"]["members"]), spec["boosting"]["members"])
        .set_alphas(spec["boosting"]["alphas"])
    )
    stack_names = spec["stacking"]["members"]
    meta = None if artifact.meta_arrays is None else MetaModel.from_arrays(artifact.meta_arrays)
    stacking = (
        Stacking(factory=factory, classes=classes)
        .set_members(members(stack_names), stack_names)
        .set_meta(
            meta,
            [manifest["members"][name]["val_accuracy"] for name in stack_names],
            error=artifact.meta_error,
        )
    )
    return EnsembleBundle(
        version=artifact.version,
        classes=classes,
        manifest=manifest,
        ensembles={"bagging": bagging, "boosting": boosting, "stacking": stacking},
    )


def load_bundle(
    version: str | None = None, root: Path = ARTIFACT_ROOT, device: str = "cpu"
) -> EnsembleBundle:
    """Load, verify and wire one artifact version (default: the newest)."""
    bundle = build_bundle(load_artifact(version, root), device=device)
    log.info("loaded model version %s (%s)", bundle.version, ", ".join(bundle.ensembles))
    return bundle
