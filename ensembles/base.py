"""The Ensemble base class and the Result every strategy returns.

An ensemble owns K member checkpoints (plain state dicts of one architecture). ``predict`` runs
all members in one batched forward (``FusedMembers``), drops members that fail or answer
non-finite numbers, and hands the survivors to the strategy's ``combine_outputs``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ensembles import aggregation
from ensembles.members import MemberFactory
from ensembles.trainer import resolve_device
from models.cnn import CNNConfig, FusedMembers, MemberCNN

log = logging.getLogger(__name__)


class EnsembleError(RuntimeError):
    """Base for errors an ensemble raises at prediction time."""


class NoMembersLeftError(EnsembleError):
    """Every member failed or produced non-finite output, so there is nothing to aggregate."""


@dataclass(frozen=True)
class Fallback:
    """Why stacking answered with a single member, and which one."""

    reason: str
    model: str

    def to_dict(self) -> dict:
        return {"reason": self.reason, "model": self.model}


@dataclass
class Result:
    """Final and per-member class probabilities for a batch, plus how they were combined.

    ``member_probabilities`` and ``weights`` cover only the members in ``member_names`` (the
    ones that answered); ``degraded`` names those that were dropped.
    """

    strategy: str
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N, C)
    member_names: list[str]
    member_probabilities: np.ndarray  # (K_alive, N, C)
    weights: np.ndarray  # (K_alive,), as used by the combination (not normalised)
    fallback: Fallback | None = None
    degraded: list[str] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=-1)

    @property
    def confidences(self) -> np.ndarray:
        return self.probabilities.max(axis=-1)

    def members_for(self, row: int = 0) -> list[dict]:
        """Each answering member's vote on one image, in the HTTP contract's shape."""
        votes = []
        for name, probs, weight in zip(
            self.member_names, self.member_probabilities[:, row], self.weights, strict=True
        ):
            index = int(probs.argmax())
            votes.append(
                {
                    "name": name,
                    "label": self.classes[index],
                    "class_index": index,
                    "confidence": float(probs[index]),
                    "weight": float(weight),
                }
            )
        return votes


@dataclass
class MemberOutputs:
    """Members' softmax outputs for a batch, split into those that answered and those dropped."""

    names: list[str]
    probabilities: np.ndarray  # (K_alive, N, C)
    alive: np.ndarray  # (K,) bool mask over all members
    degraded: list[str]


class Ensemble:
    """Members of one CNN architecture plus a rule that combines them."""

    strategy: ClassVar[str] = "ensemble"

    def __init__(self, factory: MemberFactory | None = None, classes: Sequence[str] = ()) -> None:
        self.factory = factory or MemberFactory()
        self.classes = tuple(classes)

    @property
    def cnn(self) -> CNNConfig:
        return self.factory.cnn

    @property
    def device(self) -> torch.device:
        return resolve_device(self.factory.device)

    # -- members -----------------------------------------------------------------------------
    def set_members(
        self, state_dicts: Sequence[dict[str, torch.Tensor]], names: Sequence[str]
    ) -> Ensemble:
        """Install trained member checkpoints (from training or an artifact)."""
        if len(state_dicts) != len(names) or not state_dicts:
            raise ValueError("need one name per member and at least one member")
        self.members_ = list(state_dicts)
        self.member_names_ = list(names)
        self._bank: FusedMembers | None = None
        self._modules: list[MemberCNN] | None = None
        return self

    @property
    def bank(self) -> FusedMembers:
        """The fused inference module, built once from the member checkpoints."""
        if self._bank is None:
            self._bank = FusedMembers(self.members_, self.cnn).to(self.device).eval()
        return self._bank

    def _member_modules(self) -> list[MemberCNN]:
        if self._modules is None:
            modules = []
            for sd in self.members_:
                module = MemberCNN(self.cnn)
                module.load_state_dict(sd)
                modules.append(module.to(self.device).eval())
            self._modules = modules
        return self._modules

    def _forward_one_by_one(self, x: torch.Tensor) -> np.ndarray:
        """Slow path after the batched forward failed: isolate the members that raise."""
        outputs = []
        for name, module in zip(self.member_names_, self._member_modules(), strict=True):
            try:
                outputs.append(torch.softmax(module(x).double(), dim=-1).cpu().numpy())
            except Exception:
                log.exception("member %s raised; dropping it", name)
                outputs.append(np.full((x.shape[0], self.cnn.num_classes), np.nan))
        return np.stack(outputs)

    @torch.inference_mode()
    def forward_members(self, x: torch.Tensor) -> np.ndarray:
        """Every member's softmax ``(K, N, C)`` in one batched forward; when that raises, the
        members run one by one and any that raises answers NaN rows (dropped downstream)."""
        x = x.to(self.device)
        try:
            return self.bank.probabilities(x)
        except Exception:
            log.exception("batched member forward failed; running members one by one")
            return self._forward_one_by_one(x)

    def member_outputs(self, x: torch.Tensor) -> MemberOutputs:
        """All members in one batched forward; non-finite or failing members are dropped."""
        return self.split_outputs(self.forward_members(x))

    def split_outputs(self, probs: np.ndarray) -> MemberOutputs:
        """Split every member's ``(K, N, C)`` probabilities into those that answered (finite)
        and those to drop, so ``combine_outputs`` also works on probabilities computed elsewhere."""
        alive = np.isfinite(probs).all(axis=(1, 2))
        degraded = [n for n, ok in zip(self.member_names_, alive, strict=True) if not ok]
        if degraded:
            log.warning(
                "%s: dropped members %s (failed or non-finite output)", self.strategy, degraded
            )
        names = [n for n, ok in zip(self.member_names_, alive, strict=True) if ok]
        return MemberOutputs(names, probs[alive], alive, degraded)

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> Result:
        """Class probabilities for a batch of normalised images ``(N, 1, 28, 28)``."""
        return self.combine_outputs(self.member_outputs(x))

    def combine_outputs(self, outputs: MemberOutputs) -> Result:
        """The strategy's answer from its members' outputs (one batched forward's worth)."""
        raise NotImplementedError

    def _result(
        self,
        outputs: MemberOutputs,
        probabilities: np.ndarray,
        weights: np.ndarray,
        fallback: Fallback | None = None,
    ) -> Result:
        """Package combined probabilities with the answering members' votes."""
        return Result(
            strategy=self.strategy,
            classes=self.classes,
            probabilities=probabilities,
            member_names=outputs.names,
            member_probabilities=outputs.probabilities,
            weights=weights,
            fallback=fallback,
            degraded=outputs.degraded,
        )

    def _require_members(self, outputs: MemberOutputs) -> None:
        if len(outputs.names) == 0:
            raise NoMembersLeftError(
                f"{self.strategy}: all {len(self.member_names_)} members failed or produced "
                "non-finite output; check the artifact or retrain"
            )


class VotingEnsemble(Ensemble):
    """Members combined by a (weighted) soft or hard vote; subclasses say how to weigh them."""

    combines: ClassVar[tuple[str, ...]] = ()

    def __init__(self, n_members: int, combine: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if combine not in self.combines:
            raise ValueError(f"combine must be one of {', '.join(map(repr, self.combines))}")
        self.n_members = n_members
        self.combine = combine

    def _vote_weights(self, outputs: MemberOutputs) -> np.ndarray:
        raise NotImplementedError

    def combine_outputs(self, outputs: MemberOutputs) -> Result:
        self._require_members(outputs)
        weights = self._vote_weights(outputs)
        probs = aggregation.AGGREGATORS[self.combine](outputs.probabilities, weights)
        return self._result(outputs, probs, weights)
