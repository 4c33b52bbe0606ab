"""The Ensemble base class and the Result every strategy returns.

An ensemble owns K member checkpoints (plain state dicts of one architecture) behind a
``MemberBank`` (``models/banks.py``). ``predict`` runs all members in one batched forward, drops
members that fail or answer non-finite numbers, and hands the survivors to the strategy's
``combine_outputs``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ensembles import aggregation
from models.banks import MemberBank, TorchBank
from models.cnn import CNNConfig
from models.tensor import resolve_device

if TYPE_CHECKING:  # training only: serving never imports the trainer
    from ensembles.members import MemberFactory

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
    #: Cascades only: how many members each image ran through before it exited, ``(N,)``.
    members_used: np.ndarray | None = None

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


def result_of(
    strategy: str,
    classes: tuple[str, ...],
    outputs: MemberOutputs,
    probabilities: np.ndarray,
    weights: np.ndarray,
    fallback: Fallback | None = None,
) -> Result:
    """A ``Result`` from combined probabilities and the outputs of the members that answered."""
    return Result(
        strategy=strategy,
        classes=classes,
        probabilities=probabilities,
        member_names=outputs.names,
        member_probabilities=outputs.probabilities,
        weights=weights,
        fallback=fallback,
        degraded=outputs.degraded,
    )


class Ensemble:
    """Members behind a ``MemberBank`` plus a rule that combines them."""

    strategy: ClassVar[str] = "ensemble"

    def __init__(
        self,
        factory: MemberFactory | None = None,
        classes: Sequence[str] = (),
        cnn: CNNConfig | None = None,
        device: str = "cpu",
    ) -> None:
        self.factory = factory
        self.classes = tuple(classes)
        self._cnn = cnn or (factory.cnn if factory is not None else CNNConfig())
        self._device = factory.device if factory is not None else device

    @property
    def cnn(self) -> CNNConfig:
        return self._cnn

    def training_factory(self) -> MemberFactory:
        """The factory ``fit`` trains members with (imported here: serving never trains)."""
        if self.factory is None:
            from ensembles.members import MemberFactory

            self.factory = MemberFactory(cnn=self._cnn, device=self._device)
        return self.factory

    @property
    def device(self) -> torch.device:
        return resolve_device(self._device)

    # -- members -----------------------------------------------------------------------------
    def set_members(
        self,
        state_dicts: Sequence[dict[str, torch.Tensor]],
        names: Sequence[str],
        bank: MemberBank | None = None,
    ) -> Ensemble:
        """Install trained member checkpoints (from training or an artifact); ``bank`` shares an
        already built runtime over them (serving), otherwise a ``TorchBank`` is made."""
        if len(state_dicts) != len(names) or not state_dicts:
            raise ValueError("need one name per member and at least one member")
        if bank is not None and tuple(bank.names) != tuple(names):
            raise ValueError(f"bank members {bank.names} differ from {tuple(names)}")
        self.members_ = list(state_dicts)
        self.member_names_ = list(names)
        self._bank = bank
        return self

    def use_bank(self, bank: MemberBank) -> Ensemble:
        """Serve members that exist only behind a runtime (another runtime, or a test fake)."""
        self.members_ = []
        self.member_names_ = list(bank.names)
        self._bank = bank
        return self

    @property
    def bank(self) -> MemberBank:
        """The runtime over the members (a fused ``TorchBank`` unless one was given)."""
        if self._bank is None:
            self._bank = TorchBank(self.members_, self.member_names_, self.cnn, str(self.device))
        return self._bank

    def forward_members(self, x: torch.Tensor) -> np.ndarray:
        """Every member's softmax ``(K, N, C)``; a member that fails answers NaN rows."""
        return self.bank.probabilities(x)

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
        return result_of(self.strategy, self.classes, outputs, probabilities, weights, fallback)

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
