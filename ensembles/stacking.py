"""Stacking: a logistic-regression meta-model over the members' class probabilities.

The meta-model is fitted on a held-out *blend* split that no member trained on (not out-of-fold:
K-fold OOF would train every member K more times, which a 2-core CPU cannot afford; the cost of
the blend split is that members see ~17% less data). At serve time the meta-model is plain
arrays (``coef``, ``intercept``), never a pickle.

Which logistic regression: scikit-learn's ``LogisticRegression`` on all K*C log-probabilities
("full", one candidate per C), or the "tied" form with one weight per member (a weighted
log-linear pool, K + C parameters). Training keeps whichever has the lowest cross-validated
log-loss on the blend split and records every candidate's score in the manifest.

Fallback: when the meta-model is missing or corrupt, raises, or answers anything that is not a
finite probability distribution — or when a member it needs has failed — the answer comes from
the best surviving single member (by validation accuracy recorded at training), and the result
says ``fallback = {reason, model}``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from ensembles.base import Ensemble, Fallback, MemberOutputs, Result
from ensembles.metrics import nll
from models.banks import member_probabilities

log = logging.getLogger(__name__)
EPS = 1e-7
TIED_L2 = 1e-4
ABSENT_CLASS_INTERCEPT = -1e3  # classes absent from the blend split are never chosen
META_CHOICES = ("auto", "full", "tied")


def meta_features(member_probs: np.ndarray) -> np.ndarray:
    """``(K, N, C)`` member probabilities -> ``(N, K*C)`` clipped log-probabilities."""
    k, n, c = member_probs.shape
    return np.log(np.clip(member_probs, EPS, 1.0)).transpose(1, 0, 2).reshape(n, k * c)


def is_distribution(probs: np.ndarray, n: int, c: int, atol: float = 1e-4) -> bool:
    """True when ``probs`` is an ``(n, c)`` array of finite, non-negative rows summing to one."""
    return (
        isinstance(probs, np.ndarray)
        and probs.shape == (n, c)
        and bool(np.all(np.isfinite(probs)))
        and bool(np.all(probs >= 0))
        and bool(np.allclose(probs.sum(axis=1), 1.0, atol=atol))
    )


@dataclass
class MetaModel:
    """Multinomial logistic regression as plain arrays: softmax(features @ coef.T + intercept)."""

    coef: np.ndarray  # (C, K*C)
    intercept: np.ndarray  # (C,)

    def predict_proba(self, member_probs: np.ndarray) -> np.ndarray:
        """Class probabilities from the members' probabilities (a softmax of the logits)."""
        z = meta_features(member_probs) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The weights as named arrays, for safetensors (no pickle)."""
        return {"coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> MetaModel:
        """The meta-model back from ``to_arrays``' arrays."""
        return cls(coef=np.asarray(arrays["coef"]), intercept=np.asarray(arrays["intercept"]))


MetaFitter = Callable[[np.ndarray, np.ndarray], MetaModel]


def tied_meta_model(member_probs: np.ndarray, labels: np.ndarray, l2: float = TIED_L2) -> MetaModel:
    """Fit the *tied* logistic regression: one weight per member plus a bias per class.

    ``softmax(sum_k w_k log p_k + b)`` is a weighted log-linear pool of the members, i.e. a
    multinomial logistic regression whose ``(C, K*C)`` coefficients are tied to ``w_k`` on each
    member's diagonal. K + C parameters instead of K*C*C: far less variance on a 10k blend split.
    Returned in the full model's array form, so serving cannot tell them apart.
    """
    from scipy.optimize import minimize

    k, n, c = member_probs.shape
    logp = np.log(np.clip(member_probs, EPS, 1.0))
    onehot = np.eye(c)[labels]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        z = np.tensordot(w, logp, axes=1) + b
        z -= z.max(axis=1, keepdims=True)
        log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -np.mean(log_q[np.arange(n), labels]) + l2 * w @ w
        residual = (np.exp(log_q) - onehot) / n  # d loss / d z
        grad_w = np.tensordot(logp, residual, axes=([1, 2], [0, 1])) + 2 * l2 * w
        return float(loss), np.concatenate([grad_w, residual.sum(axis=0)])

    start = np.concatenate([np.full(k, 1.0 / k), np.zeros(c)])
    fit = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    if not fit.success:
        log.warning("tied meta-model: L-BFGS stopped early (%s)", fit.message)
    w, b = fit.x[:k], fit.x[k:]
    coef = np.kron(w[None, :], np.eye(c))  # (C, K*C): member k's block is w_k * I
    present = np.bincount(labels, minlength=c) > 0
    return MetaModel(coef=coef, intercept=np.where(present, b, ABSENT_CLASS_INTERCEPT))


def full_meta_model(member_probs: np.ndarray, labels: np.ndarray, c: float) -> MetaModel:
    """scikit-learn ``LogisticRegression`` (L2, inverse strength ``c``) on all K*C log-probs."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = meta_features(member_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=2000).fit(x, labels)
    n_classes = member_probs.shape[2]
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.full(n_classes, ABSENT_CLASS_INTERCEPT)
    coef[model.classes_] = model.coef_
    intercept[model.classes_] = model.intercept_
    return MetaModel(coef=coef, intercept=intercept)


def meta_candidates(c_grid: Sequence[float], meta: str = "auto") -> dict[str, MetaFitter]:
    """The meta-models stacking chooses from: "full" (scikit-learn's LR at each C), "tied",
    or both ("auto")."""
    if meta not in META_CHOICES:
        raise ValueError(f"meta-model must be one of {', '.join(META_CHOICES)}, got {meta!r}")
    candidates: dict[str, MetaFitter] = {}
    if meta in ("auto", "full"):
        candidates.update({f"full C={c:g}": partial(full_meta_model, c=float(c)) for c in c_grid})
    if meta in ("auto", "tied"):
        candidates["tied"] = tied_meta_model
    return candidates


def fit_meta_model(
    member_probs: np.ndarray,
    labels: np.ndarray,
    candidates: dict[str, MetaFitter],
    cv: int,
    seed: int,
) -> tuple[MetaModel, str, dict[str, float]]:
    """Pick the candidate with the lowest cross-validated log-loss on the blend split, refit it on
    all of it; returns the model, its name and every candidate's CV log-loss."""
    from sklearn.model_selection import StratifiedKFold

    names = list(candidates)
    counts = np.bincount(labels)
    folds = min(cv, int(counts[counts > 0].min()))  # stratified: the rarest present class
    scores: dict[str, float] = {}
    if len(names) > 1 and folds < 2:
        log.warning("a class has one blend image: no cross-validation, meta-model %s", names[0])
    elif len(names) > 1:
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels))
        for name in names:
            losses = [
                nll(
                    candidates[name](member_probs[:, tr], labels[tr]).predict_proba(
                        member_probs[:, te]
                    ),
                    labels[te],
                    eps=1e-15,
                )
                for tr, te in splits
            ]
            scores[name] = round(float(np.mean(losses)), 6)
            log.info("meta-model %s: CV log-loss %.4f", name, scores[name])
    best = min(scores, key=scores.__getitem__) if scores else names[0]
    return candidates[best](member_probs, labels), best, scores


class Stacking(Ensemble):
    """Members' probabilities -> meta-model, with a best-single-member fallback."""

    strategy = "stacking"

    def __init__(
        self,
        c_grid: Sequence[float] = (0.003, 0.01, 0.03),
        cv: int = 5,
        meta: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.c_grid = tuple(c_grid)
        self.cv = cv
        self.meta = meta
        self.meta_: MetaModel | None = None
        self.meta_error_: str | None = "meta-model not fitted"

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        blend_idx: np.ndarray,
        member_train_indices: Sequence[np.ndarray],
    ) -> Stacking:
        """Fit the meta-model on ``blend_idx``, which must be disjoint from every member's data."""
        for name, used in zip(self.member_names_, member_train_indices, strict=True):
            overlap = np.intersect1d(used, blend_idx)
            if overlap.size:
                raise ValueError(
                    f"member {name} trained on {overlap.size} blend images; stacking must fit "
                    "only on predictions for images its members did not train on"
                )
        probs = member_probabilities(
            self.bank.probabilities, images[blend_idx], desc="stacking features"
        )
        y = labels[blend_idx]
        # kept for what else is fitted on the blend split (the cascade) and the artifact
        self.blend_probabilities_, self.blend_labels_ = probs, y
        self.member_val_accuracy_ = [float(a) for a in (probs.argmax(-1) == y).mean(axis=1)]
        self.meta_, self.meta_choice_, self.meta_cv_log_loss_ = fit_meta_model(
            probs, y, meta_candidates(self.c_grid, self.meta), self.cv, self.training_factory().seed
        )
        self.meta_error_ = None
        return self

    def set_meta(
        self, meta: MetaModel | None, member_val_accuracy: Sequence[float], error: str | None = None
    ) -> Stacking:
        """Install a meta-model loaded from an artifact (``None`` plus ``error`` when it is bad)."""
        self.meta_ = meta
        self.meta_error_ = error if meta is None else None
        self.member_val_accuracy_ = [float(a) for a in member_val_accuracy]
        return self

    @property
    def best_member_(self) -> str:
        return self.member_names_[int(np.argmax(self.member_val_accuracy_))]

    def combine_outputs(self, outputs: MemberOutputs) -> Result:
        self._require_members(outputs)
        probs, weights, fallback = meta_combine(
            outputs, self.meta_, self.meta_error_, self.member_val_accuracy_
        )
        return self._result(outputs, probs, weights, fallback)


def meta_influence(meta: MetaModel | None, k: int) -> np.ndarray:
    """Each input's share of the meta-model's absolute coefficients: its influence."""
    if meta is None:
        return np.full(k, 1.0 / k)
    per_member = np.abs(meta.coef).reshape(meta.coef.shape[0], k, -1).sum(axis=(0, 2))
    return per_member / per_member.sum()


def _meta_failure(
    outputs: MemberOutputs, meta: MetaModel | None, meta_error: str | None
) -> tuple[str | None, np.ndarray | None]:
    """Run the meta-model; return (reason it cannot be trusted, probabilities)."""
    if outputs.degraded:
        return f"member(s) {', '.join(outputs.degraded)} failed, meta-model needs all", None
    if meta is None:
        return meta_error or "meta-model missing", None
    n, c = outputs.probabilities.shape[1:]
    try:
        probs = meta.predict_proba(outputs.probabilities)
    except Exception as exc:
        log.exception("stacking meta-model raised")
        return f"meta-model raised {type(exc).__name__}: {exc}", None
    if not is_distribution(probs, n, c):
        return "meta-model output is not a finite probability distribution", None
    return None, probs


def meta_combine(
    outputs: MemberOutputs,
    meta: MetaModel | None,
    meta_error: str | None,
    val_accuracy: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, Fallback | None]:
    """Stacking's answer over its inputs' outputs, or the best surviving input's when the
    meta-model cannot be trusted: (probabilities, weights, fallback). Shared by the built-in
    Stacking and stacking ensembles created through the API."""
    reason, probs = _meta_failure(outputs, meta, meta_error)
    weights = meta_influence(meta, len(outputs.alive))[outputs.alive]
    if reason is None:
        return probs, weights, None
    accuracy = np.asarray(val_accuracy)[outputs.alive]
    best = int(np.argmax(accuracy))
    fallback = Fallback(reason=reason, model=outputs.names[best])
    log.warning("stacking falls back to %s: %s", fallback.model, reason)
    return outputs.probabilities[best], np.eye(len(outputs.names))[best], fallback
