"""Ensembles made of other models: the ensembles a user creates through the API.

A node is a member, a built-in ensemble, or a combination of nodes (``vote``, ``average``,
``weighted_average``, ``max_confidence``, ``stacking``, ``cascade``). ``predict`` runs every
member the tree needs in one batched forward and evaluates the tree bottom-up; a cascade runs its
models one at a time and only on the images still undecided, so early exits save compute.
A child that fails is dropped and named in ``degraded``, like a failed member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ensembles import aggregation
from ensembles.base import Ensemble, MemberOutputs, NoMembersLeftError, Result, result_of
from ensembles.cascade import CascadeResult, CascadeRun, MemberForward, run_cascade
from ensembles.stacking import MetaModel, meta_combine
from models.banks import MemberBank

#: Aggregations a created ensemble may use (DESIGN.md's list).
AGGREGATIONS: tuple[str, ...] = (
    "vote",
    "average",
    "weighted_average",
    "max_confidence",
    "stacking",
    "cascade",
)


class Node:
    """One model in a tree: it names the members it needs and combines their outputs."""

    name: str
    classes: tuple[str, ...]

    def leaves(self) -> tuple[str, ...]:
        """Members this node reads, each once, in first-use order."""
        raise NotImplementedError

    def evaluate(self, outputs: Mapping[str, np.ndarray]) -> Result:
        """This node's answer from its members' ``(N, C)`` probabilities (NaN rows: failed)."""
        raise NotImplementedError


@dataclass
class MemberNode(Node):
    """A single trained CNN used as a model of its own."""

    name: str
    classes: tuple[str, ...]

    def leaves(self) -> tuple[str, ...]:
        return (self.name,)

    def evaluate(self, outputs: Mapping[str, np.ndarray]) -> Result:
        probs = outputs[self.name]
        if not np.all(np.isfinite(probs)):
            raise NoMembersLeftError(f"{self.name} failed or produced non-finite output")
        return Result(
            strategy=self.name,
            classes=self.classes,
            probabilities=probs,
            member_names=[self.name],
            member_probabilities=probs[None],
            weights=np.ones(1),
        )


@dataclass
class BuiltinNode(Node):
    """A built-in ensemble of the artifact (bagging, boosting, stacking, cascade)."""

    ensemble: Ensemble
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.ensemble.strategy
        self.classes = self.ensemble.classes

    def leaves(self) -> tuple[str, ...]:
        return tuple(self.ensemble.member_names_)

    def evaluate(self, outputs: Mapping[str, np.ndarray]) -> Result:
        stacked = np.stack([outputs[name] for name in self.leaves()])
        return self.ensemble.combine_outputs(self.ensemble.split_outputs(stacked))


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


@dataclass
class CombinedNode(Node):
    """Children combined by an aggregation; ``stacking`` adds a meta-model and a fallback."""

    name: str
    classes: tuple[str, ...]
    children: list[Node]
    aggregation: str
    weights: np.ndarray = field(default_factory=lambda: np.ones(0))
    meta: MetaModel | None = None
    #: Each child's accuracy on the blend split: stacking's fallback goes to the best survivor.
    child_accuracy: Sequence[float] = ()
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if len(self.weights) != len(self.children):
            self.weights = np.ones(len(self.children))

    def leaves(self) -> tuple[str, ...]:
        return _unique([leaf for child in self.children for leaf in child.leaves()])

    def _child_outputs(self, results: list[Result | None]) -> MemberOutputs:
        alive = np.array([r is not None for r in results])
        names = [c.name for c, r in zip(self.children, results, strict=True) if r is not None]
        degraded = [c.name for c, r in zip(self.children, results, strict=True) if r is None]
        probs = np.stack([r.probabilities for r in results if r is not None]) if names else None
        return MemberOutputs(names, probs, alive, degraded)  # type: ignore[arg-type]

    def combine(self, results: list[Result | None]) -> Result:
        """Combine the children's answers (None: the child failed and is dropped)."""
        outputs = self._child_outputs(results)
        if not outputs.names:
            raise NoMembersLeftError(
                f"{self.name}: all {len(self.children)} models failed or produced non-finite output"
            )
        weights = np.asarray(self.weights, dtype=np.float64)[outputs.alive]
        if self.aggregation == "stacking":
            probs, weights, fallback = meta_combine(
                outputs, self.meta, "meta-model missing", self.child_accuracy
            )
            return result_of(self.name, self.classes, outputs, probs, weights, fallback)
        if self.aggregation == "cascade":
            alive = [r for r in results if r is not None]
            return self._cascade(outputs, lambda j, rows: alive[j].probabilities[rows])
        probs = aggregation.AGGREGATORS[self.aggregation](outputs.probabilities, weights)
        return result_of(self.name, self.classes, outputs, probs, weights)

    def evaluate(self, outputs: Mapping[str, np.ndarray]) -> Result:
        return self.combine([_try(child, outputs) for child in self.children])

    def _cascade(self, outputs: MemberOutputs, forward: MemberForward) -> Result:
        """``run_cascade`` over the surviving children (``forward(j, rows)``)."""
        weights = np.asarray(self.weights, dtype=np.float64)[outputs.alive]
        n = outputs.probabilities.shape[1]
        run = run_cascade(
            forward, len(outputs.names), n, len(self.classes), weights, self.threshold
        )
        return self._cascade_result(outputs.names, outputs.degraded, weights, run)

    def _cascade_result(
        self, names: Sequence[str], degraded: list[str], weights: np.ndarray, run: CascadeRun
    ) -> Result:
        return CascadeResult(
            strategy=self.name,
            classes=self.classes,
            probabilities=run.probabilities,
            member_names=[names[j] for j in run.ran],
            member_probabilities=run.member_probabilities,
            weights=weights[run.ran],
            degraded=degraded + [names[j] for j in run.skipped],
            members_used=run.members_used,
        )

    def predict_cascade(self, bank: MemberBank, x: torch.Tensor) -> Result:
        """Run the children in turn, each only on the images still undecided."""

        def forward(j: int, rows: np.ndarray) -> np.ndarray | None:
            try:
                return predict_node(self.children[j], bank, x[torch.from_numpy(rows)]).probabilities
            except NoMembersLeftError:
                return None

        names = [child.name for child in self.children]
        weights = np.asarray(self.weights, dtype=np.float64)
        run = run_cascade(
            forward, len(names), x.shape[0], len(self.classes), weights, self.threshold
        )
        return self._cascade_result(names, [], weights, run)


def _try(child: Node, outputs: Mapping[str, np.ndarray]) -> Result | None:
    try:
        result = child.evaluate(outputs)
    except NoMembersLeftError:
        return None
    return result if np.all(np.isfinite(result.probabilities)) else None


def predict_node(node: Node, bank: MemberBank, x: torch.Tensor) -> Result:
    """Answer a batch with a node: built-ins run their own (maybe early-exiting) path, cascades
    run their models in turn on the undecided images, everything else one batched forward."""
    if isinstance(node, BuiltinNode):
        return node.ensemble.predict(x)
    if isinstance(node, CombinedNode) and node.aggregation == "cascade":
        return node.predict_cascade(bank, x)
    names = node.leaves()
    probs = bank.select(names).probabilities(x)
    return node.evaluate(dict(zip(names, probs, strict=True)))
