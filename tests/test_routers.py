"""Routers: splits within binomial tolerance, stickiness, minimal movement, adaptive choices."""

import math
import random

import pytest

from experiments.assignment import ab_segments, arm_for, bucket, new_key
from experiments.routers import (
    ROUTERS,
    ArmStats,
    BanditRouter,
    CanaryRouter,
    FeatureBasedRouter,
    LatencyRouter,
    RandomRouter,
    RoundRobinRouter,
    Route,
    RoutingContext,
    ShadowRouter,
    WeightedRouter,
    apply_patch,
    build_router,
    canary_weights,
    initial_state,
    reweighted_state,
)
from experiments.spec import ROUTER_KINDS, SpecError, ab_definition, parse_experiment

N = 20_000
IDS = [f"client-{i}" for i in range(N)]
#: The assignment key of the experiment each test builds (a real one is random per experiment).
KEY = bytes(range(100, 132))


def build(definition, state, key=KEY):
    """``build_router`` with the test experiment's key, as the engine passes the row's."""
    return build_router(definition, state, key=key)


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4.0 * math.sqrt(n * p * (1.0 - p)) + 1e-9


def make(body: dict, models: list[str] | None = None):
    """Parse a create body like the API does and build its router with fresh state."""
    ids = models or [m["model_id"] if isinstance(m, dict) else m for m in body["models"]]
    definition = parse_experiment({"name": "exp", **body}, ids)
    state = initial_state(definition)
    return definition, state, build(definition, state)


def ctx(client_id=None, seed=0, **kwargs) -> RoutingContext:
    return RoutingContext(
        client_id=client_id, features=kwargs.pop("features", {}), rng=random.Random(seed), **kwargs
    )


def route_ids(router, ids=IDS) -> dict[str, str]:
    rng = random.Random(0)
    return {i: router.route(RoutingContext(i, {}, rng)).arm for i in ids}


def counts(arms) -> dict[str, int]:
    out: dict[str, int] = {}
    for arm in arms:
        out[arm] = out.get(arm, 0) + 1
    return out


WEIGHTED = {
    "strategy": "weighted",
    "models": [
        {"model_id": "a", "weight": 5},
        {"model_id": "b", "weight": 3},
        {"model_id": "c", "weight": 2},
    ],
}
CANARY = {
    "strategy": "canary",
    "models": ["base", "new"],
    "baseline_model": "base",
    "canary_model": "new",
}


def test_there_is_one_router_class_per_kind():
    assert tuple(ROUTERS) == ROUTER_KINDS
    for kind, cls in ROUTERS.items():
        assert cls.kind == kind
        assert cls.needs_ticket is (kind == "round_robin")
        assert cls.needs_stats == {"bandit": "reward", "latency_based": "latency"}.get(kind)


# --- share-based routers -------------------------------------------------------------------------


def test_weighted_split_over_many_clients():
    _, _, router = make(WEIGHTED)
    assert isinstance(router, WeightedRouter)
    assert router.arms == ("a", "b", "c")
    assert router.expected_shares() == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    got = counts(route_ids(router).values())
    for arm, share in router.expected_shares().items():
        assert within_4_sigma(got[arm], N, share)


def test_weighted_split_for_anonymous_requests_uses_the_rng():
    _, _, router = make(WEIGHTED)
    rng = random.Random(42)
    routes = [router.route(RoutingContext(None, {}, rng)) for _ in range(N)]
    assert {r.reason for r in routes} == {"random"}
    got = counts(r.arm for r in routes)
    for arm, share in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert within_4_sigma(got[arm], N, share)


@pytest.mark.parametrize("kind", ["weighted", "random", "canary", "round_robin"])
def test_same_client_gets_the_same_arm_across_rng_seeds_and_tickets(kind):
    body = CANARY if kind == "canary" else {**WEIGHTED, "strategy": kind}
    if kind == "round_robin":  # round-robin rotates unless asked to be sticky
        body = {"strategy": kind, "models": ["a", "b", "c"], "sticky": True}
    _, _, router = make(body)
    for client_id in IDS[:200]:
        routes = {router.route(ctx(client_id, seed, ticket=seed)) for seed in range(20)}
        assert len(routes) == 1
        assert next(iter(routes)).reason == "sticky"


def test_round_robin_rotates_known_clients_by_default():
    definition, _, router = make({"strategy": "round_robin", "models": ["a", "b", "c"]})
    assert definition["sticky"] is False
    arms = [router.route(ctx("alice", 0, ticket=t)).arm for t in range(6)]
    assert arms == ["a", "b", "c", "a", "b", "c"]


def test_sticky_false_draws_per_request_even_with_a_client_id():
    _, _, router = make({**WEIGHTED, "sticky": False})
    arms = {router.route(ctx("alice", seed)).arm for seed in range(200)}
    assert arms == {"a", "b", "c"}


def test_blank_client_id_is_anonymous():
    _, _, router = make(WEIGHTED)
    assert router.route(ctx("   ")).reason == "random"


def test_random_router_is_uniform_without_weights():
    _, _, router = make({"strategy": "random", "models": ["a", "b", "c", "d"]})
    assert isinstance(router, RandomRouter)
    assert router.expected_shares() == pytest.approx(dict.fromkeys("abcd", 0.25))
    got = counts(route_ids(router).values())
    assert all(within_4_sigma(got[arm], N, 0.25) for arm in "abcd")


def test_experiments_hash_independently():
    _, _, first = make({"strategy": "random", "models": ["a", "b"]})
    body = {"name": "other", "strategy": "random", "models": ["a", "b"]}
    definition = parse_experiment(body, ["a", "b"])
    second = build(definition, {}, key=new_key())
    first_arms, second_arms = route_ids(first), route_ids(second)
    agree = sum(first_arms[i] == second_arms[i] for i in IDS)
    assert within_4_sigma(agree, N, 0.5)


@pytest.mark.parametrize("share", [0.5, 0.2, 0.37, 0.0, 1.0])
def test_builtin_ab_is_random_with_boosting_first_and_a_keyed_assignment(share):
    definition = ab_definition(share)
    assert definition["strategy"] == "random"
    assert definition["control"] == "bagging"
    router = build(definition, initial_state(definition))
    assert router.expected_shares() == pytest.approx({"bagging": 1 - share, "boosting": share})
    segments = ab_segments(share)
    for client_id, arm in route_ids(router, IDS[:5_000]).items():
        assert arm == arm_for(segments, bucket(KEY, client_id))
    rng_a, rng_b = random.Random(3), random.Random(3)
    for _ in range(2_000):
        drawn = "boosting" if rng_b.random() < share else "bagging"
        assert router.route(RoutingContext(None, {}, rng_a)).arm == drawn


def test_sticky_routing_needs_the_key_and_never_shows_it():
    definition, state, _ = make(WEIGHTED)
    keyless = build_router(definition, state)  # enough for shares (reports), not to route
    assert keyless.expected_shares() == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    with pytest.raises(ValueError, match="assignment key"):
        keyless.route(ctx("alice"))
    assert keyless.route(ctx(None)).arm in "abc"  # anonymous requests need no key
    router = build(definition, state)
    assert KEY.hex() not in repr(router) and repr(KEY) not in repr(router)  # e.g. in a log line


def test_same_client_keeps_its_arm_under_one_key_and_not_under_a_public_formula():
    definition, state, _ = make(WEIGHTED)
    router, other = build(definition, state), build(definition, state, key=new_key())
    assert route_ids(router, IDS[:2_000]) == route_ids(build(definition, state), IDS[:2_000])
    mine, theirs = route_ids(router, IDS[:4_000]), route_ids(other, IDS[:4_000])
    agree = sum(mine[i] == theirs[i] for i in IDS[:4_000])
    # Same shares, independent keys: agreement is what chance gives (0.5² + 0.3² + 0.2²).
    assert within_4_sigma(agree, 4_000, 0.38)


def test_round_robin_is_exactly_balanced_given_tickets():
    _, _, router = make({"strategy": "round_robin", "models": ["a", "b", "c"]})
    assert isinstance(router, RoundRobinRouter)
    routes = [router.route(ctx(ticket=t)) for t in range(300)]
    assert [r.arm for r in routes[:6]] == ["a", "b", "c", "a", "b", "c"]
    assert counts(r.arm for r in routes) == {"a": 100, "b": 100, "c": 100}
    assert {r.reason for r in routes} == {"round_robin"}
    assert router.expected_shares() == pytest.approx(dict.fromkeys("abc", 1 / 3))


def test_round_robin_without_a_ticket_draws_uniformly():
    _, _, router = make({"strategy": "round_robin", "models": ["a", "b"]})
    rng = random.Random(8)
    routes = [router.route(RoutingContext(None, {}, rng)) for _ in range(N)]
    assert {r.reason for r in routes} == {"random"}
    assert within_4_sigma(sum(r.arm == "a" for r in routes), N, 0.5)


def test_round_robin_not_sticky_alternates_even_for_known_clients():
    _, _, router = make({"strategy": "round_robin", "models": ["a", "b"], "sticky": False})
    assert [router.route(ctx("alice", ticket=t)).arm for t in range(4)] == ["a", "b", "a", "b"]


def test_canary_gets_its_percentage():
    _, state, router = make({**CANARY, "canary_percentage": 10})
    assert isinstance(router, CanaryRouter)
    assert state["weights"] == {"base": 0.9, "new": 0.1}
    assert state["segments"]["new"] == [(0.0, 0.1)]
    got = counts(route_ids(router).values())
    assert within_4_sigma(got["new"], N, 0.1)


def test_canary_ramp_from_10_to_20_percent_moves_about_10_percent_all_to_the_canary():
    definition, state, router = make(CANARY)
    new_definition, new_state = apply_patch(definition, state, {"canary_percentage": 20})
    assert new_definition["canary_percentage"] == 20
    assert new_state["weights"] == pytest.approx({"base": 0.8, "new": 0.2})
    after = build(new_definition, new_state)
    before_arms, after_arms = route_ids(router), route_ids(after)
    moved = [i for i in IDS if before_arms[i] != after_arms[i]]
    assert all(before_arms[i] == "base" and after_arms[i] == "new" for i in moved)
    assert within_4_sigma(len(moved), N, 0.1)
    assert within_4_sigma(sum(a == "new" for a in after_arms.values()), N, 0.2)


def test_reweighting_three_arms_moves_only_clients_of_the_shrinking_arm():
    definition, state, router = make(WEIGHTED)
    new_state = reweighted_state(definition, state, {"a": 0.3, "b": 0.3, "c": 0.4})
    after = build(definition, new_state)
    before_arms, after_arms = route_ids(router), route_ids(after)
    moved = [i for i in IDS if before_arms[i] != after_arms[i]]
    assert all(before_arms[i] == "a" and after_arms[i] == "c" for i in moved)
    assert within_4_sigma(len(moved), N, 0.2)


def test_ramp_step():
    def router(**fields):
        return make({**CANARY, **fields})[2]

    assert router().ramp_step() is None
    assert router(step_percentage=15).ramp_step() == 25
    assert router(canary_percentage=40, step_percentage=15, max_percentage=50).ramp_step() == 50
    assert router(canary_percentage=50, step_percentage=15, max_percentage=50).ramp_step() is None


def test_canary_at_0_and_100_percent():
    _, _, zero = make({**CANARY, "canary_percentage": 0})
    _, _, full = make({**CANARY, "canary_percentage": 100})
    assert {zero.route(ctx(i)).arm for i in IDS[:500]} == {"base"}
    assert {full.route(ctx(i)).arm for i in IDS[:500]} == {"new"}


# --- patches -------------------------------------------------------------------------------------


def test_apply_patch_weights_updates_definition_and_state():
    definition, state, _ = make(WEIGHTED)
    new_definition, new_state = apply_patch(
        definition, state, {"weights": {"a": 1, "b": 1, "c": 2}}
    )
    assert new_definition["weights"] == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})
    assert build(new_definition, new_state).expected_shares() == pytest.approx(
        {"a": 0.25, "b": 0.25, "c": 0.5}
    )
    assert definition["weights"] == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})  # not mutated


@pytest.mark.parametrize(
    ("body", "patch", "field"),
    [
        (WEIGHTED, {"weights": {"a": 1, "b": 1}}, "weights.c"),
        (WEIGHTED, {"weights": {"a": 1, "b": 1, "c": 1, "z": 1}}, "weights.z"),
        (WEIGHTED, {"weights": {"a": 0, "b": 0, "c": 0}}, "weights"),
        (WEIGHTED, {"weights": {"a": -1, "b": 1, "c": 1}}, "weights"),
        (WEIGHTED, {"weights": {"a": True, "b": 1, "c": 1}}, "weights"),
        (WEIGHTED, {"weights": [1, 2, 3]}, "weights"),
        (WEIGHTED, {"canary_percentage": 20}, "canary_percentage"),
        (WEIGHTED, {"rules": []}, "rules"),
        (CANARY, {"weights": {"base": 1, "new": 1}}, "weights"),
        (CANARY, {"canary_percentage": 101}, "canary_percentage"),
        (CANARY, {"canary_percentage": "20"}, "canary_percentage"),
        (CANARY, {"canary_percentage": float("nan")}, "canary_percentage"),
        ({**CANARY, "max_percentage": 30}, {"canary_percentage": 40}, "canary_percentage"),
        (
            {"strategy": "round_robin", "models": ["a", "b"]},
            {"weights": {"a": 1, "b": 1}},
            "weights",
        ),
    ],
)
def test_bad_patches_name_the_field(body, patch, field):
    definition, state, _ = make(body)
    with pytest.raises(SpecError) as info:
        apply_patch(definition, state, patch)
    assert info.value.field == field


def test_canary_weights():
    definition, _, _ = make(CANARY)
    assert canary_weights(definition, 25) == {"base": 0.75, "new": 0.25}


def test_build_router_accepts_state_as_stored_json():
    definition, state, router = make(WEIGHTED)
    stored = {
        "segments": {arm: [list(r) for r in ranges] for arm, ranges in state["segments"].items()},
        "weights": state["weights"],
    }
    again = build(definition, stored)
    assert route_ids(again, IDS[:1000]) == route_ids(router, IDS[:1000])


# --- feature rules -------------------------------------------------------------------------------

RULES = {
    "strategy": "feature_based",
    "models": ["big", "jpeg", "rest"],
    "rules": [
        {"condition": "width > 500", "model": "big"},
        {"condition": "format == 'jpeg' or segment == 'enterprise'", "model": "jpeg"},
        {"condition": "width > 100", "model": "big"},
    ],
    "default_model": "rest",
}


@pytest.mark.parametrize(
    ("features", "arm", "reason"),
    [
        ({"width": 800, "format": "jpeg"}, "big", "rule:0"),
        ({"width": 300, "format": "jpeg"}, "jpeg", "rule:1"),
        ({"width": 50, "segment": "enterprise"}, "jpeg", "rule:1"),
        ({"width": 300, "format": "png"}, "big", "rule:2"),
        ({"width": 50, "format": "png"}, "rest", "default"),
        ({}, "rest", "default"),
    ],
)
def test_first_matching_rule_wins_else_default(features, arm, reason):
    _, _, router = make(RULES)
    assert isinstance(router, FeatureBasedRouter)
    assert router.route(ctx("alice", features=features)) == Route(arm, (), reason)
    assert router.expected_shares() is None
    assert router.arms == ("big", "jpeg", "rest")


def test_feature_conditions_are_parsed_once_at_build():
    _, _, router = make(RULES)
    conditions = [condition for condition, _ in router.rules]
    router.route(ctx(features={"width": 1}))
    assert [condition for condition, _ in router.rules] == conditions
    assert all(not isinstance(condition, str) for condition in conditions)


# --- bandit --------------------------------------------------------------------------------------


def bandit(algorithm="epsilon_greedy", rate=0.1, arms=("good", "bad")):
    return BanditRouter("b", arms, algorithm, rate)


def run(router, stats, n=N, seed=1):
    rng = random.Random(seed)
    return [router.route(RoutingContext(None, {}, rng, stats)) for _ in range(n)]


STATS = {"good": ArmStats(1000, 900), "bad": ArmStats(1000, 700)}


def test_epsilon_greedy_exploits_the_better_arm_and_explores_at_rate_epsilon():
    routes = run(bandit(rate=0.1), STATS)
    explored = sum(r.reason == "explore" for r in routes)
    assert within_4_sigma(explored, N, 0.1)
    assert {r.reason for r in routes} == {"explore", "exploit"}
    assert all(r.arm == "good" for r in routes if r.reason == "exploit")
    assert within_4_sigma(sum(r.arm == "good" for r in routes), N, 1 - 0.1 + 0.1 / 2)


def test_epsilon_greedy_with_three_arms():
    stats = {**STATS, "mid": ArmStats(1000, 800)}
    routes = run(bandit(rate=0.3, arms=("bad", "mid", "good")), stats)
    assert within_4_sigma(sum(r.arm == "good" for r in routes), N, 1 - 0.3 + 0.3 / 3)
    assert within_4_sigma(sum(r.arm == "bad" for r in routes), N, 0.1)


def test_epsilon_greedy_tries_unlabelled_arms_first():
    stats = {"good": ArmStats(1000, 900)}
    routes = run(bandit(rate=0.0), stats, n=100)
    assert {r.arm for r in routes} == {"bad"}
    assert {r.reason for r in routes} == {"explore"}


def test_thompson_concentrates_on_a_clearly_better_arm():
    routes = run(bandit("thompson"), {"good": ArmStats(500, 450), "bad": ArmStats(500, 300)})
    assert {r.reason for r in routes} == {"thompson"}
    assert sum(r.arm == "good" for r in routes) > 0.999 * N


def test_thompson_tries_an_unlabelled_arm():
    routes = run(bandit("thompson"), {"good": ArmStats(500, 450)}, n=2_000)
    assert 50 < sum(r.arm == "bad" for r in routes) < 1_950


def test_thompson_splits_evenly_between_equal_arms():
    routes = run(bandit("thompson"), {"good": ArmStats(100, 50), "bad": ArmStats(100, 50)})
    assert within_4_sigma(sum(r.arm == "good" for r in routes), N, 0.5)


def test_bandit_survives_inconsistent_stats():
    route = bandit().route(ctx(stats={"good": ArmStats(5, 9), "bad": ArmStats(-1, 3)}))
    assert route.arm in ("good", "bad")


def test_bandit_from_definition_is_not_sticky():
    _, _, router = make({"strategy": "bandit", "models": ["good", "bad"], "algorithm": "thompson"})
    assert isinstance(router, BanditRouter)
    assert router.sticky is False
    assert router.algorithm == "thompson"
    assert router.reward_window == 1000
    assert router.expected_shares() is None


# --- latency -------------------------------------------------------------------------------------


def latency_stats(fast_ms: float, slow_ms: float, samples: int = 200):
    return {
        "fast": ArmStats(latency_median_ms=fast_ms, latency_samples=samples),
        "slow": ArmStats(latency_median_ms=slow_ms, latency_samples=samples),
    }


def test_latency_router_picks_the_fastest_and_still_explores():
    _, _, router = make({"strategy": "latency_based", "models": ["slow", "fast"]})
    assert isinstance(router, LatencyRouter)
    assert router.exploration_rate == 0.05 and router.latency_window == 200
    routes = run(router, latency_stats(10.0, 50.0))
    assert all(r.arm == "fast" for r in routes if r.reason == "lowest_latency")
    assert within_4_sigma(sum(r.reason == "explore" for r in routes), N, 0.05)
    assert within_4_sigma(sum(r.arm == "slow" for r in routes), N, 0.025)


def test_latency_router_switches_when_the_slow_arm_recovers():
    router = LatencyRouter("l", ("slow", "fast"))
    before = run(router, latency_stats(10.0, 50.0), n=2_000)
    after = run(router, latency_stats(10.0, 4.0), n=2_000)
    assert sum(r.arm == "fast" for r in before) > 1_800
    assert sum(r.arm == "slow" for r in after) > 1_800


def test_latency_router_tries_arms_with_few_samples_first():
    router = LatencyRouter("l", ("slow", "fast"))
    stats = {
        "fast": ArmStats(latency_median_ms=10.0, latency_samples=500),
        "slow": ArmStats(latency_median_ms=None, latency_samples=2),
    }
    routes = run(router, stats, n=100)
    assert {(r.arm, r.reason) for r in routes} == {("slow", "explore")}
    assert {r.arm for r in run(router, {}, n=200)} == {"slow", "fast"}


# --- shadow --------------------------------------------------------------------------------------


def test_shadow_router_serves_the_default_and_adds_shadows_at_the_percentage():
    _, _, router = make(
        {
            "strategy": "shadow",
            "models": ["live", "s1", "s2"],
            "default_model": "live",
            "shadow_models": ["s1", "s2"],
            "shadow_percentage": 30,
        }
    )
    assert isinstance(router, ShadowRouter)
    assert router.arms == ("live",)
    assert router.expected_shares() == {"live": 1.0}
    routes = run(router, {})
    assert {r.arm for r in routes} == {"live"}
    shadowed = [r for r in routes if r.shadows]
    assert all(r.shadows == ("s1", "s2") and r.reason == "shadow" for r in shadowed)
    assert within_4_sigma(len(shadowed), N, 0.3)


def test_shadow_router_defaults_to_every_request():
    _, _, router = make(
        {
            "strategy": "shadow",
            "models": ["live", "s1"],
            "default_model": "live",
            "shadow_models": ["s1"],
        }
    )
    assert all(r.shadows == ("s1",) for r in run(router, {}, n=500))


# --- construction errors -------------------------------------------------------------------------


def test_build_router_refuses_unknown_kinds_and_nameless_sticky_definitions():
    with pytest.raises(ValueError):
        build({"strategy": "magic"}, {})
    definition, state, _ = make(WEIGHTED)
    del definition["name"]
    with pytest.raises(ValueError, match="name"):
        build(definition, state)


def test_state_naming_unknown_arms_is_refused():
    definition, _, _ = make(WEIGHTED)
    with pytest.raises(ValueError):
        build(definition, {"segments": {"zzz": [(0.0, 1.0)]}, "weights": {}})
