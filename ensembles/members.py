"""``MemberFactory``: the one place members are made, like torchensemble's ``_make_estimator``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ensembles.trainer import TrainConfig, fit_members
from models.cnn import CNNConfig
from models.tensor import resolve_device


@dataclass
class MemberFactory:
    """Architecture, optimiser settings, seed and device for every member an ensemble trains."""

    cnn: CNNConfig = field(default_factory=CNNConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "auto"

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        index_sets: Sequence[np.ndarray],
        desc: str,
        offset: int = 0,
    ) -> list[dict[str, torch.Tensor]]:
        """Train one member per index set (jointly); ``offset`` varies the seed across calls."""
        return fit_members(
            images,
            labels,
            index_sets,
            self.cnn,
            self.train,
            seed=self.seed * 1000 + offset,
            device=resolve_device(self.device),
            desc=desc,
        )
