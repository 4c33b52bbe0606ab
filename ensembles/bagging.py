"""Bagging: members trained on bootstrap resamples, combined by soft (or hard) voting."""

from __future__ import annotations

import numpy as np

from ensembles.base import MemberOutputs, VotingEnsemble


class Bagging(VotingEnsemble):
    """N members, each on a bootstrap resample (with replacement) of the training split.

    ``combine="average"`` is the soft vote (mean of member softmax outputs); ``"vote"`` is the
    hard majority vote.
    """

    strategy = "bagging"

    combines = ("average", "vote")

    def __init__(self, n_members: int = 5, combine: str = "average", **kwargs) -> None:
        super().__init__(n_members, combine, **kwargs)

    def fit(self, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray) -> Bagging:
        """Draw one bootstrap sample per member from ``train_idx`` and train all members jointly."""
        rng = np.random.default_rng(self.training_factory().seed)
        n = len(train_idx)
        samples = [train_idx[rng.integers(0, n, n)] for _ in range(self.n_members)]
        self.train_indices_ = [np.unique(s) for s in samples]
        state_dicts = self.training_factory().fit(images, labels, samples, desc="bagging")
        return self.set_members(state_dicts, [f"bagging-{i}" for i in range(self.n_members)])

    def _vote_weights(self, outputs: MemberOutputs) -> np.ndarray:
        return np.ones(len(outputs.names))
