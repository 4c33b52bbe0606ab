"""Boosting: multi-class AdaBoost SAMME (Zhu, Zou, Rosset & Hastie 2009) with CNN members.

Each round draws a weighted resample of the training split (``n`` draws with replacement, with
probability proportional to the sample weights) and trains a member on it; resampling rather
than a weighted loss keeps mini-batch gradients well-scaled when a few weights grow large.
The member's weighted error on the whole training split sets its ``alpha`` and the new weights.

Prediction is the alpha-weighted average of member softmax outputs (``combine="weighted_average"``,
a soft SAMME that keeps usable probabilities); ``combine="vote"`` gives the discrete SAMME rule
``argmax_k sum_m alpha_m [h_m(x) = k]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ensembles.base import MemberOutputs, VotingEnsemble
from models.banks import member_probabilities
from models.cnn import FusedMembers

log = logging.getLogger(__name__)


class BoostingError(ValueError):
    """The first weak learner was no better than chance, so SAMME cannot start."""


@dataclass(frozen=True)
class SammeStep:
    """One SAMME update: the member's weighted error, its alpha, and the next sample weights."""

    error: float
    alpha: float
    weights: np.ndarray | None  # None: stop, the member is no better than chance
    stop: bool


def samme_step(
    weights: np.ndarray, incorrect: np.ndarray, n_classes: int, learning_rate: float = 1.0
) -> SammeStep:
    """One SAMME round: err = sum(w * miss) / sum(w), alpha, and the re-weighted samples.

    alpha = lr * (log((1 - err) / err) + log(K - 1)); w *= exp(alpha * miss), renormalised.

    Stops (``weights=None``) when err >= 1 - 1/K; a perfect member (err = 0) gets alpha = 1 and ends
    the boosting, as in scikit-learn.
    """
    weights = np.asarray(weights, dtype=np.float64)
    miss = np.asarray(incorrect, dtype=bool)
    error = float(np.sum(weights[miss]) / np.sum(weights))
    if error <= 0.0:
        return SammeStep(error=0.0, alpha=1.0, weights=weights / weights.sum(), stop=True)
    if error >= 1.0 - 1.0 / n_classes:
        return SammeStep(error=error, alpha=0.0, weights=None, stop=True)
    alpha = learning_rate * (math.log((1.0 - error) / error) + math.log(n_classes - 1.0))
    updated = weights * np.exp(alpha * miss)
    return SammeStep(error=error, alpha=alpha, weights=updated / updated.sum(), stop=False)


class Boosting(VotingEnsemble):
    """SAMME over CNN members; the loop lives in ``fit``, one round in ``_boost``."""

    strategy = "boosting"

    combines = ("weighted_average", "vote")

    def __init__(
        self,
        n_members: int = 5,
        learning_rate: float = 0.3,
        combine: str = "weighted_average",
        **kwargs,
    ) -> None:
        super().__init__(n_members, combine, **kwargs)
        self.learning_rate = learning_rate

    def fit(self, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray) -> Boosting:
        """Run up to ``n_members`` SAMME rounds on ``train_idx``."""
        n_classes = self.cnn.num_classes
        rng = np.random.default_rng(self.training_factory().seed + 7919)
        weights = np.full(len(train_idx), 1.0 / len(train_idx))
        state_dicts, self.alphas_, self.errors_, self.train_indices_ = [], [], [], []
        for round_ in range(self.n_members):
            state_dict, step, sample = self._boost(round_, weights, images, labels, train_idx, rng)
            log.info(
                "boosting round %d: weighted error %.4f alpha %.4f", round_, step.error, step.alpha
            )
            if step.weights is None:
                if round_ == 0:
                    raise BoostingError(
                        f"first member's weighted error {step.error:.3f} is no better than chance "
                        f"(1 - 1/K = {1 - 1 / n_classes:.3f}); train longer or check the labels"
                    )
                log.info("boosting stops at round %d: error >= 1 - 1/K", round_)
                break
            state_dicts.append(state_dict)
            self.alphas_.append(step.alpha)
            self.errors_.append(step.error)
            self.train_indices_.append(np.unique(sample))
            weights = step.weights
            if step.stop:
                break
        names = [f"boosting-{i}" for i in range(len(state_dicts))]
        return self.set_members(state_dicts, names)

    def _boost(self, round_, weights, images, labels, train_idx, rng):
        """Train one member on a weighted resample and score it on the whole training split."""
        sample = train_idx[rng.choice(len(train_idx), size=len(train_idx), p=weights)]
        [state_dict] = self.training_factory().fit(
            images, labels, [sample], desc=f"boosting round {round_}", offset=100 + round_
        )
        bank = FusedMembers([state_dict], self.cnn).to(self.device)
        probs = member_probabilities(bank.probabilities, images[train_idx])[0]
        incorrect = probs.argmax(axis=-1) != labels[train_idx]
        step = samme_step(weights, incorrect, self.cnn.num_classes, self.learning_rate)
        return state_dict, step, sample

    def set_alphas(self, alphas: list[float]) -> Boosting:
        """Install alphas loaded from an artifact."""
        if len(alphas) != len(self.member_names_):
            raise ValueError("one alpha per member")
        self.alphas_ = [float(a) for a in alphas]
        return self

    def _vote_weights(self, outputs: MemberOutputs) -> np.ndarray:
        return np.asarray(self.alphas_, dtype=np.float64)[outputs.alive]
