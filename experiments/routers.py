"""One class per experiment router behind one protocol: numbers in, a routing decision out.

A router is built once from a normalised definition (:mod:`experiments.spec`) and the experiment's
live state, then asked :meth:`Router.route` for every request. It never touches Flask or the
database: the caller passes what the router declares it needs — a cluster-wide ticket for
``round_robin`` (``needs_ticket``), per-arm reward or latency figures for ``bandit`` and
``latency_based`` (``needs_stats``) — inside a :class:`RoutingContext`.

State is ``{"segments": {arm: [[low, high], ...]}, "weights": {arm: weight}}``. Routers that split
traffic by share (``weighted``, ``random``, ``round_robin``, ``canary``) hash a known client onto
the segments with the experiment's secret assignment key (:mod:`experiments.assignment`; the
caller passes ``key`` to :func:`build_router`), so a client keeps its arm but cannot choose it,
and a reweighting (:func:`reweighted_state`) moves only the clients it must. The other routers
keep ``{"segments": {}, "weights": {}}``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from experiments.assignment import (
    AB_SEGMENT_ORDER,
    Segments,
    arm_for,
    bucket,
    check_key,
    initial_segments,
    rebalance,
    shares,
    validate_weights,
)
from experiments.conditions import Condition, parse
from experiments.spec import SpecError, finite_number, served_arms, shadow_arms

log = logging.getLogger(__name__)

MIN_LATENCY_SAMPLES = 5
"""An arm with fewer latency samples than this is tried before the medians are trusted."""

SPLIT_KINDS: tuple[str, ...] = ("weighted", "random", "round_robin", "canary")
"""Routers whose state holds segments (a share per arm)."""


@dataclass(frozen=True)
class ArmStats:
    """What the caller measured for one arm (from the database, cached for at most a second)."""

    labelled: int = 0
    correct: int = 0
    latency_median_ms: float | None = None
    latency_samples: int = 0


@dataclass
class RoutingContext:
    """Everything a router may look at for one request; built by the caller per request."""

    client_id: str | None
    features: Mapping[str, Any]
    rng: random.Random
    stats: Mapping[str, ArmStats] = field(default_factory=dict)
    ticket: int | None = None


@dataclass(frozen=True)
class Route:
    """The arm that serves, the shadows that run afterwards, and a one-word reason for metrics."""

    arm: str
    shadows: tuple[str, ...] = ()
    reason: str = ""


class Router(Protocol):
    """What the serving path needs from any router."""

    kind: ClassVar[str]
    arms: tuple[str, ...]
    sticky: bool
    needs_ticket: ClassVar[bool]
    needs_stats: ClassVar[str | None]

    def route(self, ctx: RoutingContext) -> Route:
        """Pick the arm (and shadows) for one request."""
        ...

    def expected_shares(self) -> dict[str, float] | None:
        """The share of traffic each arm should get (for SRM), or None when it adapts."""
        ...


def _known(client_id: str | None) -> bool:
    """A blank id is anonymous, so it does not pin every anonymous caller to one arm."""
    return client_id is not None and bool(client_id.strip())


def _coerce_segments(raw: Any) -> Segments:
    """Accept segments as stored in JSON (lists of two-element lists)."""
    if not isinstance(raw, Mapping):
        raise ValueError("state['segments'] must map arm names to [low, high] ranges")
    return {str(arm): [(float(lo), float(hi)) for lo, hi in ranges] for arm, ranges in raw.items()}


class _SplitRouter:
    """Shared behaviour of the share-based routers: hash known clients, draw for the rest."""

    kind: ClassVar[str] = ""
    needs_ticket: ClassVar[bool] = False
    needs_stats: ClassVar[str | None] = None
    shadows: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        arms: Sequence[str],
        segments: Segments,
        sticky: bool = True,
        key: bytes | None = None,
    ):
        self.name = name
        self.arms = tuple(arms)
        self.sticky = bool(sticky)
        self.segments = _coerce_segments(segments)
        unknown = set(self.segments) - set(self.arms)
        if unknown:
            raise ValueError(f"segments name arms {sorted(unknown)} that are not in {self.arms}")
        if not any(self.segments.values()):
            raise ValueError("segments hold no range; give at least one arm a weight > 0")
        #: The experiment's secret; None only for routers built to read shares, never to route.
        self._key = None if key is None else check_key(key)

    def __repr__(self) -> str:
        """Never the key: a router may end up in a log line or a traceback."""
        return f"{type(self).__name__}(name={self.name!r}, arms={self.arms!r})"

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised definition, its state and its assignment key."""
        return cls(
            _name(definition),
            served_arms(definition),
            state["segments"],
            definition["sticky"],
            key=key,
        )

    def route(self, ctx: RoutingContext) -> Route:
        """Sticky by keyed hash for a known client; otherwise a draw with the same shares."""
        client_id = ctx.client_id
        if self.sticky and client_id is not None and _known(client_id):
            if self._key is None:
                raise ValueError(
                    f"experiment {self.name} has no assignment key, so it cannot route sticky "
                    "clients; build the router with the experiment's assignment_key"
                )
            return Route(arm_for(self.segments, bucket(self._key, client_id)), (), "sticky")
        return self._anonymous(ctx)

    def _anonymous(self, ctx: RoutingContext) -> Route:
        """A weighted random draw from the caller's rng, so tests and workers control it."""
        return Route(arm_for(self.segments, ctx.rng.random()), (), "random")

    def expected_shares(self) -> dict[str, float] | None:
        """Each arm's share of [0, 1): what both hashed and drawn traffic converge to."""
        measured = shares(self.segments)
        return {arm: measured.get(arm, 0.0) for arm in self.arms}


class WeightedRouter(_SplitRouter):
    """Traffic split by configured weights."""

    kind: ClassVar[str] = "weighted"


class RandomRouter(_SplitRouter):
    """Uniform random split, or weighted when weights are given (the built-in ``ab``)."""

    kind: ClassVar[str] = "random"


class RoundRobinRouter(_SplitRouter):
    """Arms in turn from a cluster-wide ticket; a known client stays on its hashed arm if sticky."""

    kind: ClassVar[str] = "round_robin"
    needs_ticket: ClassVar[bool] = True

    def _anonymous(self, ctx: RoutingContext) -> Route:
        """``arms[ticket % n]``; without a ticket (counter unavailable) a uniform draw."""
        if ctx.ticket is None:
            return Route(ctx.rng.choice(self.arms), (), "random")
        return Route(self.arms[ctx.ticket % len(self.arms)], (), "round_robin")

    def expected_shares(self) -> dict[str, float] | None:
        """Turns give every arm the same share."""
        return {arm: 1.0 / len(self.arms) for arm in self.arms}


class CanaryRouter(_SplitRouter):
    """A baseline and a canary that gets ``canary_percentage`` of clients, optionally ramped."""

    kind: ClassVar[str] = "canary"

    def __init__(
        self,
        name: str,
        baseline: str,
        canary: str,
        segments: Segments,
        percentage: float,
        step: float | None = None,
        maximum: float = 100.0,
        sticky: bool = True,
        key: bytes | None = None,
    ):
        arms = (baseline, canary)
        super().__init__(name, arms, segments, sticky, key=key)
        self.baseline = baseline
        self.canary = canary
        self.percentage = float(percentage)
        self.step = None if step is None else float(step)
        self.maximum = float(maximum)

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised canary definition, its state and its assignment key."""
        return cls(
            _name(definition),
            definition["baseline_model"],
            definition["canary_model"],
            state["segments"],
            definition["canary_percentage"],
            definition.get("step_percentage"),
            definition.get("max_percentage", 100.0),
            definition["sticky"],
            key=key,
        )

    def ramp_step(self) -> float | None:
        """The next percentage of a progressive ramp, or None when there is no further step."""
        if self.step is None or self.percentage >= self.maximum:
            return None
        return min(self.percentage + self.step, self.maximum)


class FeatureBasedRouter:
    """The first rule whose condition holds picks the model; otherwise the default model.

    Routing is a pure function of the request's features, so it is as sticky as the features
    are; ``sticky`` is kept for the definition's sake and needs no hashing.
    """

    kind: ClassVar[str] = "feature_based"
    needs_ticket: ClassVar[bool] = False
    needs_stats: ClassVar[str | None] = None
    shadows: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        rules: Sequence[tuple[str | Condition, str]],
        default: str,
        arms: Sequence[str] | None = None,
        sticky: bool = True,
    ):
        self.name = name
        # Parsed once here; route() only evaluates.
        self.rules: tuple[tuple[Condition, str], ...] = tuple(
            (parse(cond) if isinstance(cond, str) else cond, model) for cond, model in rules
        )
        self.default = default
        if arms is None:
            arms = list(dict.fromkeys([model for _, model in self.rules] + [default]))
        self.arms = tuple(arms)
        self.sticky = bool(sticky)

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised feature_based definition (state and key are unused)."""
        rules = [(rule["condition"], rule["model"]) for rule in definition["rules"]]
        return cls(
            _name(definition),
            rules,
            definition["default_model"],
            served_arms(definition),
            definition["sticky"],
        )

    def route(self, ctx: RoutingContext) -> Route:
        """Evaluate the rules in order; ``rule:<index>`` says which one matched."""
        for index, (condition, model) in enumerate(self.rules):
            if condition.evaluate(ctx.features):
                return Route(model, (), f"rule:{index}")
        return Route(self.default, (), "default")

    def expected_shares(self) -> dict[str, float] | None:
        """Shares follow the traffic's features, so there is nothing to expect."""
        return None


def _best(candidates: Sequence[str], score: Mapping[str, float], rng: random.Random) -> str:
    """The arm with the highest score, ties broken at random so no arm is favoured by position."""
    top = max(score[arm] for arm in candidates)
    tied = [arm for arm in candidates if score[arm] == top]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


class BanditRouter:
    """Routes each request to the arm most likely to be right, learning from labelled outcomes."""

    kind: ClassVar[str] = "bandit"
    needs_ticket: ClassVar[bool] = False
    needs_stats: ClassVar[str | None] = "reward"
    shadows: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        arms: Sequence[str],
        algorithm: str = "epsilon_greedy",
        exploration_rate: float = 0.1,
        reward_window: int = 1000,
    ):
        if algorithm not in ("epsilon_greedy", "thompson"):
            raise ValueError(f"unknown bandit algorithm {algorithm!r}")
        self.name = name
        self.arms = tuple(arms)
        self.algorithm = algorithm
        self.exploration_rate = float(exploration_rate)
        self.reward_window = int(reward_window)
        self.sticky = False

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised bandit definition (rewards come per request; no hashing)."""
        return cls(
            _name(definition),
            served_arms(definition),
            definition["algorithm"],
            definition["bandit_exploration_rate"],
            definition["reward_window"],
        )

    def _counts(self, ctx: RoutingContext) -> dict[str, tuple[int, int]]:
        """(labelled, correct) per arm, clamped so inconsistent figures cannot crash a request."""
        counts = {}
        for arm in self.arms:
            stats = ctx.stats.get(arm) or ArmStats()
            labelled = max(0, int(stats.labelled))
            counts[arm] = (labelled, min(max(0, int(stats.correct)), labelled))
        return counts

    def route(self, ctx: RoutingContext) -> Route:
        """epsilon-greedy: explore with probability epsilon, else exploit; Thompson: sample."""
        counts = self._counts(ctx)
        if self.algorithm == "thompson":
            draws = {
                arm: ctx.rng.betavariate(1.0 + correct, 1.0 + labelled - correct)
                for arm, (labelled, correct) in counts.items()
            }
            return Route(_best(self.arms, draws, ctx.rng), (), "thompson")
        if ctx.rng.random() < self.exploration_rate:
            return Route(ctx.rng.choice(self.arms), (), "explore")
        untried = [arm for arm in self.arms if counts[arm][0] == 0]
        if untried:
            return Route(ctx.rng.choice(untried), (), "explore")
        accuracy = {arm: correct / labelled for arm, (labelled, correct) in counts.items()}
        return Route(_best(self.arms, accuracy, ctx.rng), (), "exploit")

    def expected_shares(self) -> dict[str, float] | None:
        """A bandit moves traffic on purpose, so there is no share to check against."""
        return None


class LatencyRouter:
    """Routes to the arm with the lowest recent median latency, re-measuring the others at times."""

    kind: ClassVar[str] = "latency_based"
    needs_ticket: ClassVar[bool] = False
    needs_stats: ClassVar[str | None] = "latency"
    shadows: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        arms: Sequence[str],
        latency_window: int = 200,
        exploration_rate: float = 0.05,
        min_samples: int = MIN_LATENCY_SAMPLES,
    ):
        self.name = name
        self.arms = tuple(arms)
        self.latency_window = int(latency_window)
        self.exploration_rate = float(exploration_rate)
        self.min_samples = int(min_samples)
        self.sticky = False

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised latency_based definition (no key: it does not hash clients)."""
        return cls(
            _name(definition),
            served_arms(definition),
            definition["latency_window"],
            definition["latency_exploration_rate"],
        )

    def route(self, ctx: RoutingContext) -> Route:
        """Unmeasured arms first, then explore at the set rate, else the fastest median."""
        medians: dict[str, float] = {}
        untried = []
        for arm in self.arms:
            stats = ctx.stats.get(arm) or ArmStats()
            median = stats.latency_median_ms
            if (
                stats.latency_samples < self.min_samples
                or median is None
                or not math.isfinite(median)
            ):
                untried.append(arm)
            else:
                medians[arm] = -float(median)
        if untried:
            return Route(ctx.rng.choice(untried), (), "explore")
        if ctx.rng.random() < self.exploration_rate:
            return Route(ctx.rng.choice(self.arms), (), "explore")
        return Route(_best(self.arms, medians, ctx.rng), (), "lowest_latency")

    def expected_shares(self) -> dict[str, float] | None:
        """Shares follow the latencies, so there is nothing to expect."""
        return None


class ShadowRouter:
    """Serves the default model; the shadow models run on a copy of the request afterwards."""

    kind: ClassVar[str] = "shadow"
    needs_ticket: ClassVar[bool] = False
    needs_stats: ClassVar[str | None] = None

    def __init__(
        self, name: str, default: str, shadow_models: Sequence[str], percentage: float = 100.0
    ):
        self.name = name
        self.default = default
        self.shadows = tuple(shadow_models)
        self.arms = (default,)
        self.percentage = float(percentage)
        self.sticky = False

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
    ) -> Any:
        """Build from a normalised shadow definition (no key: it does not hash clients)."""
        return cls(
            _name(definition),
            definition["default_model"],
            shadow_arms(definition),
            definition["shadow_percentage"],
        )

    def route(self, ctx: RoutingContext) -> Route:
        """The default always serves; shadows join ``shadow_percentage`` percent of requests."""
        if self.percentage >= 100.0 or ctx.rng.random() * 100.0 < self.percentage:
            return Route(self.default, self.shadows, "shadow")
        return Route(self.default, (), "default")

    def expected_shares(self) -> dict[str, float] | None:
        """Only the default model serves."""
        return {self.default: 1.0}


ROUTERS: dict[str, type] = {
    "weighted": WeightedRouter,
    "round_robin": RoundRobinRouter,
    "random": RandomRouter,
    "canary": CanaryRouter,
    "feature_based": FeatureBasedRouter,
    "bandit": BanditRouter,
    "latency_based": LatencyRouter,
    "shadow": ShadowRouter,
}
"""Router kind (the definition's ``strategy``) -> class; one row per router."""


def _name(definition: Mapping[str, Any]) -> str:
    """The experiment's name (routers report it; its key, not its name, drives the hashing)."""
    name = definition.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the definition needs the experiment's name to route")
    return name


def _kind(definition: Mapping[str, Any]) -> str:
    """The router kind, refusing anything that is not one of the eight."""
    kind = definition.get("strategy")
    if kind not in ROUTERS:
        raise ValueError(f"unknown router {kind!r}; expected one of {', '.join(ROUTERS)}")
    return str(kind)


def _split_weights(definition: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Weights and range order of a share-based router, from its definition."""
    kind = _kind(definition)
    arms = list(served_arms(definition))
    if kind == "canary":
        canary_share = float(definition["canary_percentage"]) / 100.0
        weights = {
            definition["baseline_model"]: 1.0 - canary_share,
            definition["canary_model"]: canary_share,
        }
        # The canary's range starts at 0, so ramps only ever add clients to it.
        return weights, [definition["canary_model"], definition["baseline_model"]]
    if kind == "round_robin":
        return {arm: 1.0 / len(arms) for arm in arms}, arms
    weights = {arm: float(definition["weights"][arm]) for arm in arms}
    if definition.get("name") == "ab" and sorted(arms) == sorted(AB_SEGMENT_ORDER):
        return weights, list(AB_SEGMENT_ORDER)  # the first release's layout: Boosting first
    return weights, arms


def initial_state(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The state a new experiment starts with: its weights laid out as contiguous ranges."""
    if _kind(definition) not in SPLIT_KINDS:
        return {"segments": {}, "weights": {}}
    weights, order = _split_weights(definition)
    return {"segments": initial_segments(weights, order), "weights": weights}


def canary_weights(definition: Mapping[str, Any], percentage: float) -> dict[str, float]:
    """The weights that give the canary ``percentage`` percent of clients."""
    share = float(percentage) / 100.0
    return {definition["baseline_model"]: 1.0 - share, definition["canary_model"]: share}


def reweighted_state(
    definition: Mapping[str, Any], state: Mapping[str, Any], weights: Mapping[str, float]
) -> dict[str, Any]:
    """New state for new weights, moving only the clients whose arm lost share."""
    kind = _kind(definition)
    if kind not in ("weighted", "random", "canary"):
        raise SpecError(
            "weights",
            f"strategy {kind} takes no weights; only weighted and random do "
            "(canary takes canary_percentage)",
        )
    arms = served_arms(definition)
    if not isinstance(weights, Mapping):
        raise SpecError(
            "weights", f"weights must be an object of model -> weight for {', '.join(arms)}"
        )
    for arm in weights:
        if arm not in arms:
            raise SpecError(
                f"weights.{arm}",
                f"weights names {arm!r}, which is not an arm; arms: {', '.join(arms)}",
            )
    for arm in arms:
        if arm not in weights:
            raise SpecError(
                f"weights.{arm}",
                f"weights.{arm} is missing: give every arm a weight ({', '.join(arms)}); "
                "send 0 to switch one off",
            )
    try:
        checked = validate_weights({arm: weights[arm] for arm in arms})
    except ValueError as exc:
        raise SpecError("weights", f"weights: {exc}") from exc
    segments = state.get("segments") if state else None
    if not segments:
        segments = initial_state(definition)["segments"]
    total = math.fsum(checked.values())
    normalised = (
        checked if abs(total - 1.0) <= 1e-12 else {a: w / total for a, w in checked.items()}
    )
    return {"segments": rebalance(_coerce_segments(segments), checked), "weights": normalised}


def apply_patch(
    definition: Mapping[str, Any], state: Mapping[str, Any], patch: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``{"weights"}`` or ``{"canary_percentage"}`` and return (definition, state).

    ``status`` is left to the caller (it is lifecycle, not routing); other keys are refused.
    """
    if not isinstance(patch, Mapping):
        raise SpecError("body", "the body must be a JSON object")
    for key in patch:
        if key not in ("weights", "canary_percentage", "status"):
            raise SpecError(
                key, f"{key} cannot be changed; send weights, canary_percentage or status"
            )
    new_definition = dict(definition)
    new_state = dict(state) if state else initial_state(definition)
    kind = _kind(definition)
    if patch.get("weights") is not None:
        if kind == "canary":
            raise SpecError("weights", "a canary is changed with canary_percentage, not weights")
        new_state = reweighted_state(definition, new_state, patch["weights"])
        new_definition["weights"] = dict(new_state["weights"])
    if patch.get("canary_percentage") is not None:
        if kind != "canary":
            raise SpecError(
                "canary_percentage", f"canary_percentage applies to canary, not {kind}; remove it"
            )
        value = patch["canary_percentage"]
        maximum = float(definition.get("max_percentage", 100))
        number = finite_number(value)
        if number is None or not 0.0 <= number <= maximum:
            raise SpecError(
                "canary_percentage",
                f"canary_percentage must be a number from 0 to {maximum:g} (max_percentage), "
                f"got {value!r}; send e.g. 20",
            )
        new_state = reweighted_state(definition, new_state, canary_weights(definition, value))
        new_definition["canary_percentage"] = value
    return new_definition, new_state


def build_router(
    definition: Mapping[str, Any], state: Mapping[str, Any], key: bytes | None = None
) -> Router:
    """Build the router a definition describes; empty state means a fresh experiment.

    ``key`` is the experiment's secret ``assignment_key``: required to route sticky clients,
    not to read shares (reports and the definition service build key-less routers for that).
    """
    cls = ROUTERS[_kind(definition)]
    if not state or (cls.kind in SPLIT_KINDS and not state.get("segments")):
        state = initial_state(definition)
    router: Router = cls.from_definition(definition, state, key=key)
    return router
