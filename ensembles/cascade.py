"""Cascade: members run one after another, and each image stops at the first confident answer.

Member k only runs on the images that members 1..k-1 left undecided, so easy images cost one
member and the mean cost per image falls well below running everyone. After each member, the
image's *running combination* of the members run so far is formed; the image exits as soon as
its largest probability reaches ``threshold``; images still undecided after the last member get
the combination of every member that answered. ``threshold = 1.0`` never exits early.

Two running combinations (``pool``), weights renormalised over the members run so far:

- ``"linear"``: ``sum_j w_j p_j / sum_j w_j`` (a weighted soft vote);
- ``"log"``: ``softmax((W / sum_j w_j) * sum_j w_j log p_j + b)``, a log-linear pool whose
  weights are rescaled to their full total ``W``. With stacking's *tied* weights and class
  biases (``ensembles/stacking.py``) the combination of all members *is* the tied meta-model, so
  the cascade with ``threshold = 1.0`` answers as Stacking does. (Early exits are sharper than
  Stacking's: one member's log-probabilities scaled by ``W / w_1`` are over-confident, so the
  cascade's NLL and ECE are worse than Stacking's even where its accuracy is not.)

Results: ``members_used`` counts, per image, the members whose outputs were combined for it.
``member_names`` are the members that ran for at least one image of the batch (for serving's
batch of one: exactly those that ran for it), ``member_probabilities`` their outputs, where an
image that exited before a member ran holds the cascade's answer instead (NaN-free rows), and
``members_for(row)`` lists only the members that image really ran. A member that fails or
answers non-finite numbers when its turn comes is skipped and named in ``degraded``.

``run_cascade`` is the one implementation: ``Cascade.predict`` feeds it one member at a time
through ``bank.select([name])`` on the undecided images only; ``combine_outputs`` (scoring,
sweeps) feeds it slices of all members' outputs computed at once. Both do the same arithmetic
on the same rows, so they agree exactly whenever the bank answers the same numbers.

Choosing on the blend split only (``plan_cascade``): member order by blend accuracy, best first;
for each pool a threshold sweep; the reference is the best blend accuracy any pool reaches on
the grid (which always holds 1.0, the full combination); each pool's threshold is the smallest
one within ``TOLERANCE`` (0.1 points) of that reference, i.e. the cheapest setting that gives up
at most 0.1 points against the best reachable accuracy (mean members never decrease as the
threshold rises, so smallest = cheapest); the pool needing fewer mean members at its threshold
wins (a tie keeps the linear pool). The tolerance is half of the 0.2-point budget the cascade
may lose against Stacking, leaving the other half for the blend-to-test difference. Measured on
the shipped artifact's blend split: both pools meet the bar first at 0.8, the log pool with 1.55
mean members, the linear one with 1.77, so the log pool serves; both sweeps are in its manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ensembles.base import Ensemble, MemberOutputs, NoMembersLeftError, Result
from ensembles.stacking import EPS, MetaModel, tied_meta_model
from models.banks import MemberBank
from models.cnn import flops_per_image
from models.tensor import IMAGE_SIZE

log = logging.getLogger(__name__)

POOLS = ("linear", "log")
#: Thresholds the blend sweep tries; 1.0 (run everything) is always added.
THRESHOLD_GRID = tuple(round(0.5 + 0.025 * i, 3) for i in range(20)) + (
    0.98,
    0.99,
    0.995,
    0.999,
    1.0,
)
#: Blend accuracy (a fraction) the chosen threshold may give up against the best reachable.
TOLERANCE = 0.001
CHOSEN_ON = "blend split (no member trained on it; test never used)"
RULE = (
    "member order: blend accuracy, best first; per pool, the smallest grid threshold whose blend "
    "accuracy is within tolerance of the best blend accuracy any pool reaches on the grid "
    "(1.0 = all members included); the pool with fewer mean members there wins (tie: linear)"
)

#: ``forward(j, rows)``: member j's probabilities ``(len(rows), C)`` for those images, or None
#: when the member failed.
MemberForward = Callable[[int, np.ndarray], np.ndarray | None]


@dataclass
class CascadeRun:
    """What one pass of the cascade produced for a batch."""

    probabilities: np.ndarray  # (N, C)
    members_used: np.ndarray  # (N,) int64: members combined for each image
    ran: list[int]  # members (indices) combined for at least one image, in run order
    skipped: list[int]  # members that failed or answered non-finite numbers when they ran
    member_probabilities: np.ndarray  # (len(ran), N, C), see ``run_cascade``


@dataclass
class CascadeResult(Result):
    """A cascade's ``Result``: ``members_for(row)`` lists only the members that ran for it."""

    def members_for(self, row: int = 0) -> list[dict]:
        """Votes of the first ``members_used[row]`` members, the ones that image really ran."""
        votes = super().members_for(row)
        return votes if self.members_used is None else votes[: int(self.members_used[row])]


def check_weights(weights: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    """``k`` finite positive weights as float64 (uniform when None): renormalising needs them."""
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"need {k} finite positive cascade weights, got {w}")
    return w


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")


def _combination(
    acc: np.ndarray, wsum: float, total: float, pool: str, bias: np.ndarray
) -> np.ndarray:
    """The running combination from the running weighted sum of the members run so far."""
    if pool == "linear":
        return acc / wsum
    z = acc * (total / wsum) + bias
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_cascade(
    forward: MemberForward,
    k: int,
    n: int,
    c: int,
    weights: Sequence[float] | np.ndarray | None,
    threshold: float,
    pool: str = "linear",
    bias: Sequence[float] | np.ndarray | None = None,
) -> CascadeRun:
    """Run ``k`` members in order over ``n`` images, each only on the images still undecided.

    A member whose ``forward`` returns None or non-finite numbers is skipped (``skipped``).
    ``member_probabilities`` has a row per member in ``ran``; an image that exited before a
    member ran holds the cascade's own answer there, so every row is a NaN-free distribution
    (``members_used`` tells real rows from those). Raises ``NoMembersLeftError`` when no member
    answered.
    """
    _check_pool(pool)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    w = check_weights(weights, k)
    b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64)
    if b.shape != (c,):
        raise ValueError(f"bias must have {c} entries, got shape {b.shape}")
    total = 0.0
    for weight in w:  # summed in the running order, so the full prefix scales by exactly 1
        total += weight
    out = np.empty((n, c))
    used = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    acc: np.ndarray | None = None
    current: np.ndarray | None = None
    wsum, count = 0.0, 0
    ran: list[int] = []
    skipped: list[int] = []
    outputs: list[np.ndarray] = []
    for j in range(k):
        if rows.size == 0 and ran:  # every image has exited (an empty batch still asks one)
            break
        p = forward(j, rows)
        if p is None or np.shape(p) != (rows.size, c) or not np.all(np.isfinite(p)):
            skipped.append(j)
            continue
        p = np.asarray(p, dtype=np.float64)
        term = w[j] * (p if pool == "linear" else np.log(np.clip(p, EPS, 1.0)))
        acc = term if acc is None else acc + term
        wsum += w[j]
        count += 1
        current = _combination(acc, wsum, total, pool, b)
        used[rows] = count
        full = np.empty((n, c))
        full[rows] = p
        outputs.append(full)
        ran.append(j)
        if threshold < 1.0:
            confident = current.max(axis=1) >= threshold
        else:  # 1.0 runs everyone: a float64 softmax can round to exactly 1
            confident = np.zeros(rows.size, dtype=bool)
        out[rows[confident]] = current[confident]
        keep = ~confident
        rows, acc, current = rows[keep], acc[keep], current[keep]
    if not ran:
        raise NoMembersLeftError(
            f"cascade: all {k} members failed or produced non-finite output; check the artifact"
        )
    if rows.size:
        out[rows] = current  # undecided after the last member: everyone who answered
    for m, full in enumerate(outputs):
        not_reached = used <= m
        full[not_reached] = out[not_reached]
    return CascadeRun(out, used, ran, skipped, np.stack(outputs))


def cascade_combine(
    probs: np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    threshold: float,
    pool: str = "linear",
    bias: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cascade's answer ``(N, C)`` and members used ``(N,)`` from all members' ``(K, N, C)``
    probabilities at once (scoring and sweeps); the same arithmetic as ``Cascade.predict``."""
    k, n, c = probs.shape
    run = run_cascade(lambda j, rows: probs[j][rows], k, n, c, weights, threshold, pool, bias)
    return run.probabilities, run.members_used


def order_by_accuracy(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> list[str]:
    """Member names by blend accuracy, best first (ties keep the given order)."""
    accuracy = (probs.argmax(axis=-1) == labels).mean(axis=1)
    return [names[i] for i in np.argsort(-accuracy, kind="stable")]


def sweep(
    probs: np.ndarray,
    labels: np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    grid: Sequence[float] = THRESHOLD_GRID,
    pool: str = "linear",
    bias: Sequence[float] | np.ndarray | None = None,
) -> list[dict]:
    """Accuracy and mean members of the cascade at each threshold (1.0 always included)."""
    rows = []
    for threshold in sorted({float(t) for t in grid} | {1.0}):
        answer, used = cascade_combine(probs, weights, threshold, pool, bias)
        correct = int(np.sum(answer.argmax(axis=-1) == labels))
        rows.append(
            {
                "threshold": threshold,
                "correct": correct,
                "accuracy": round(correct / len(labels), 6),
                "mean_members": round(float(used.mean()), 4),
            }
        )
    return rows


def _smallest_within(rows: list[dict], reference: int, tolerance: float, n: int) -> dict | None:
    """The lowest-threshold row whose correct count is within ``tolerance`` of ``reference``."""
    ok = [r for r in rows if r["correct"] >= reference - tolerance * n - 1e-9]
    return min(ok, key=lambda r: r["threshold"]) if ok else None


def choose_threshold(
    blend_probs: np.ndarray,
    labels: np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    grid: Sequence[float] = THRESHOLD_GRID,
    *,
    pool: str = "linear",
    bias: Sequence[float] | np.ndarray | None = None,
    tolerance: float = TOLERANCE,
    reference: int | None = None,
) -> tuple[float, list[dict]]:
    """The cheapest threshold on the blend split that gives up at most ``tolerance`` accuracy.

    The smallest grid threshold whose blend accuracy is within ``tolerance`` of ``reference``
    correct images (default: the best the grid reaches, 1.0 included); returns it and the sweep.
    Takes blend data only: test data cannot influence the choice.
    """
    rows = sweep(blend_probs, labels, weights, grid, pool, bias)
    best = max(r["correct"] for r in rows) if reference is None else reference
    chosen = _smallest_within(rows, best, tolerance, len(labels))
    if chosen is None:  # an outside reference nothing reaches: the most accurate setting
        chosen = max(rows, key=lambda r: (r["correct"], -r["threshold"]))
    return chosen["threshold"], rows


def tied_weights(meta: MetaModel, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-member weights and class biases of a *tied* meta-model (raises for a full one)."""
    c = meta.intercept.shape[0]
    w = meta.coef.reshape(c, k, c)[0, :, 0].copy()
    if not np.allclose(meta.coef, np.kron(w[None, :], np.eye(c)), rtol=0, atol=1e-12):
        raise ValueError("not a tied meta-model: member blocks are not multiples of the identity")
    return w, meta.intercept.copy()


@dataclass(frozen=True)
class CascadePlan:
    """A cascade chosen on the blend split: order, pool, weights, threshold and the evidence."""

    members: list[str]
    pool: str
    weights: list[float]
    bias: list[float] | None
    threshold: float
    tolerance: float
    reference_accuracy: float
    blend_accuracy: float
    blend_mean_members: float
    sweeps: dict[str, list[dict]] = field(default_factory=dict)
    chosen: dict[str, float | None] = field(default_factory=dict)

    def to_manifest(self) -> dict:
        """The manifest's ``strategies.cascade`` entry."""
        return {
            "members": self.members,
            "order": "blend accuracy, best first",
            "pool": self.pool,
            "weights": self.weights,
            "bias": self.bias,
            "threshold": self.threshold,
            "chosen_on": CHOSEN_ON,
            "rule": RULE,
            "tolerance": self.tolerance,
            "reference_accuracy": self.reference_accuracy,
            "blend": {"accuracy": self.blend_accuracy, "mean_members": self.blend_mean_members},
            "threshold_per_pool": self.chosen,
            "sweep": self.sweeps,
        }


def plan_cascade(
    blend_probs: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    grid: Sequence[float] = THRESHOLD_GRID,
    tolerance: float = TOLERANCE,
    pools: Sequence[str] = POOLS,
    order: Sequence[str] | None = None,
) -> CascadePlan:
    """Choose member order, pool and threshold from blend probabilities ``(K, N, C)`` in
    ``names`` order and blend labels alone (the rule in the module docstring)."""
    names = list(names)
    order = list(order) if order is not None else order_by_accuracy(blend_probs, labels, names)
    index = [names.index(name) for name in order]
    probs = blend_probs[index]
    candidates: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for pool in pools:
        _check_pool(pool)
        if pool == "linear":
            candidates[pool] = (np.ones(len(order)), None)
            continue
        w, b = tied_weights(tied_meta_model(blend_probs, labels), len(names))
        if np.all(w > 0):
            candidates[pool] = (w[index], b)
        else:
            log.warning("cascade: tied weights %s are not all positive; no log pool", w)
    sweeps = {pool: sweep(probs, labels, w, grid, pool, b) for pool, (w, b) in candidates.items()}
    reference = max(r["correct"] for rows in sweeps.values() for r in rows)
    chosen_rows = {
        pool: _smallest_within(rows, reference, tolerance, len(labels))
        for pool, rows in sweeps.items()
    }
    eligible = [pool for pool, row in chosen_rows.items() if row is not None]
    pool = min(eligible, key=lambda p: (chosen_rows[p]["mean_members"], POOLS.index(p)))
    row = chosen_rows[pool]
    weights, bias = candidates[pool]
    for p, r in chosen_rows.items():
        if r is not None:
            log.info(
                "cascade %s pool: threshold %g, blend accuracy %.4f, mean members %.3f",
                p,
                r["threshold"],
                r["accuracy"],
                r["mean_members"],
            )
    return CascadePlan(
        members=order,
        pool=pool,
        weights=[float(x) for x in weights],
        bias=None if bias is None else [float(x) for x in bias],
        threshold=row["threshold"],
        tolerance=tolerance,
        reference_accuracy=round(reference / len(labels), 6),
        blend_accuracy=row["accuracy"],
        blend_mean_members=row["mean_members"],
        sweeps=sweeps,
        chosen={p: (r["threshold"] if r else None) for p, r in chosen_rows.items()},
    )


class Cascade(Ensemble):
    """Members in order with early exit on a confident running combination."""

    strategy = "cascade"

    def __init__(
        self,
        threshold: float = 0.9,
        weights: Sequence[float] | None = None,
        pool: str = "linear",
        bias: Sequence[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        _check_pool(pool)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.pool = pool
        self._weights = None if weights is None else [float(w) for w in weights]
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)

    @classmethod
    def from_plan(cls, plan: CascadePlan, **kwargs) -> Cascade:
        """A cascade configured as ``plan_cascade`` chose (members still to be set)."""
        return cls(plan.threshold, plan.weights, plan.pool, plan.bias, **kwargs)

    def set_members(
        self,
        state_dicts: Sequence[dict[str, torch.Tensor]],
        names: Sequence[str],
        bank: MemberBank | None = None,
    ) -> Cascade:
        """Install members in run order (weights, when given, follow that order)."""
        super().set_members(state_dicts, names, bank)
        check_weights(self._weights, len(self.member_names_))
        return self

    @property
    def weights_(self) -> np.ndarray:
        """The pool weights in run order (uniform when none were given)."""
        return check_weights(self._weights, len(self.member_names_))

    @property
    def mflops_per_member(self) -> float:
        """One member's forward on one image, in MFLOP (the cascade's cost unit)."""
        return flops_per_image(self.cnn) / 1e6

    def _run(self, forward: MemberForward, n: int) -> CascadeRun:
        return run_cascade(
            forward,
            len(self.member_names_),
            n,
            len(self.classes) or self.cnn.num_classes,
            self.weights_,
            self.threshold,
            self.pool,
            self.bias,
        )

    def predict(self, x: torch.Tensor) -> Result:
        """Run one member at a time, each only on the images still undecided."""
        n = x.shape[0]

        def forward(j: int, rows: np.ndarray) -> np.ndarray | None:
            name = self.member_names_[j]
            part = x if rows.size == n else x[torch.from_numpy(rows)]
            try:
                return self.bank.select([name]).probabilities(part)[0]
            except Exception:
                log.exception("cascade member %s raised; skipping it", name)
                return None

        return self._package(self._run(forward, n))

    def combine_outputs(self, outputs: MemberOutputs) -> Result:
        """The same cascade from every member's outputs at once (members' rows sliced)."""
        self._require_members(outputs)
        position = np.cumsum(outputs.alive) - 1
        probs = outputs.probabilities

        def forward(j: int, rows: np.ndarray) -> np.ndarray | None:
            return probs[position[j]][rows] if outputs.alive[j] else None

        return self._package(self._run(forward, probs.shape[1]))

    def _package(self, run: CascadeRun) -> CascadeResult:
        degraded = [self.member_names_[j] for j in run.skipped]
        if degraded:
            log.warning("cascade: skipped members %s (failed or non-finite output)", degraded)
        return CascadeResult(
            strategy=self.strategy,
            classes=self.classes,
            probabilities=run.probabilities,
            member_names=[self.member_names_[j] for j in run.ran],
            member_probabilities=run.member_probabilities,
            weights=self.weights_[run.ran],
            degraded=degraded,
            members_used=run.members_used,
        )

    def warm_up(self) -> None:
        """Build every member's single-member bank now, so no request pays for it."""
        x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        for name in self.member_names_:
            self.bank.select([name]).probabilities(x)
