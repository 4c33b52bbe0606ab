"""Consistent hashing onto ranges: sticky per client, minimal movement, first-release split kept."""

import hashlib
import math
import random

import pytest

from experiments.assignment import (
    ARMS,
    ab_segments,
    arm_for,
    assign_arm,
    bucket,
    client_bucket,
    experiment_namespace,
    hash_client_id,
    initial_segments,
    rebalance,
    shares,
)

IDS = [f"client-{i}" for i in range(20_000)]


def old_bucket(client_id: str) -> float:
    """The first release's formula, copied verbatim so compatibility is tested, not assumed."""
    digest = hashlib.sha256(("chorus-ab-v1:" + client_id).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def old_arm(client_id: str, share: float) -> str:
    return "boosting" if old_bucket(client_id) < share else "bagging"


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4.0 * math.sqrt(n * p * (1.0 - p)) + 1e-9


def assert_partition(segments):
    pieces = sorted((low, high) for ranges in segments.values() for low, high in ranges)
    assert pieces[0][0] == 0.0
    assert pieces[-1][1] == 1.0
    for (_, high), (low, _) in zip(pieces, pieces[1:], strict=False):
        assert high == low
    assert all(low < high for low, high in pieces)
    assert math.fsum(shares(segments).values()) == pytest.approx(1.0, abs=1e-12)


# --- first-release API (thin wrappers) -----------------------------------------------------------


def test_arms_are_bagging_then_boosting():
    assert ARMS == ("bagging", "boosting")


@pytest.mark.parametrize("client_id", ["alice", "client-42", "ünïcode-☃", "x" * 500])
def test_same_client_id_always_gets_the_same_arm(client_id):
    arms = {assign_arm(client_id, 0.5, rng=random.Random(seed)) for seed in range(1000)}
    assert len(arms) == 1


def test_sticky_arm_ignores_rng_and_follows_the_hash():
    value = client_bucket("alice")
    assert 0.0 <= value < 1.0
    expected = "boosting" if value < 0.5 else "bagging"
    assert assign_arm("alice", 0.5) == expected
    assert assign_arm("alice", 0.5, rng=random.Random(0)) == expected


def test_client_bucket_is_the_top_53_bits_of_a_namespaced_sha256():
    digest = hashlib.sha256(b"chorus-ab-v1:alice").digest()
    assert client_bucket("alice") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53


@pytest.mark.parametrize("share", [0.5, 0.2, 0.9])
def test_distinct_client_ids_split_by_the_configured_share(share):
    boosting = sum(assign_arm(client_id, share) == "boosting" for client_id in IDS)
    assert within_4_sigma(boosting, len(IDS), share)


def test_lowering_the_share_only_moves_clients_from_boosting_to_bagging():
    ids = IDS[:2_000]
    at_half = {i for i in ids if assign_arm(i, 0.5) == "boosting"}
    at_fifth = {i for i in ids if assign_arm(i, 0.2) == "boosting"}
    assert at_fifth < at_half


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_random_assignment_with_a_seeded_rng_gives_the_split(share):
    rng = random.Random(1234)
    draws = [assign_arm(None, share, rng=rng) for _ in range(20_000)]
    assert set(draws) == set(ARMS)
    assert within_4_sigma(draws.count("boosting"), len(draws), share)


def test_random_assignment_is_the_first_release_draw():
    rng_a, rng_b = random.Random(7), random.Random(7)
    draws = [assign_arm(None, 0.3, rng=rng_a) for _ in range(2_000)]
    assert draws == ["boosting" if rng_b.random() < 0.3 else "bagging" for _ in range(2_000)]


@pytest.mark.parametrize("client_id", ["", "   "])
def test_blank_client_id_is_treated_as_unknown(client_id):
    rng = random.Random(99)
    draws = [assign_arm(client_id, 0.5, rng=rng) for _ in range(2_000)]
    assert within_4_sigma(draws.count("boosting"), len(draws), 0.5)


@pytest.mark.parametrize(("share", "arm"), [(0.0, "bagging"), (1.0, "boosting")])
def test_extreme_shares_pin_every_request(share, arm):
    rng = random.Random(3)
    assert {assign_arm(None, share, rng=rng) for _ in range(500)} == {arm}
    assert {assign_arm(f"c{i}", share) for i in range(500)} == {arm}


def test_default_rng_is_used_without_one():
    assert {assign_arm(None) for _ in range(200)} == set(ARMS)


@pytest.mark.parametrize("share", [-0.01, 1.01, float("nan"), float("inf"), "half", None, True])
def test_invalid_share_is_rejected(share):
    with pytest.raises(ValueError, match="boosting_share"):
        assign_arm("alice", share)
    with pytest.raises(ValueError, match="boosting_share"):
        assign_arm(None, share)


def test_hash_client_id_is_namespaced_sha256_hex():
    hashed = hash_client_id("alice")
    assert hashed == hashlib.sha256(b"chorus-client-v1:alice").hexdigest()
    assert len(hashed) == 64 and "alice" not in hashed
    assert hash_client_id("alice") == hashed
    assert hash_client_id("bob") != hashed


def test_stored_hash_differs_from_the_assignment_hash():
    assignment_digest = hashlib.sha256(b"chorus-ab-v1:alice").hexdigest()
    assert hash_client_id("alice") != assignment_digest
    assert hash_client_id("alice") != hashlib.sha256(b"alice").hexdigest()


# --- ab compatibility through the new API --------------------------------------------------------

AB_SHARES = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99, 1.0] + [
    random.Random(5).random() for _ in range(20)
]


@pytest.mark.parametrize("share", AB_SHARES)
def test_ab_segments_reproduce_the_first_release_assignment(share):
    segments = initial_segments(
        {"bagging": 1.0 - share, "boosting": share}, order=["boosting", "bagging"]
    )
    assert segments == ab_segments(share)
    namespace = experiment_namespace("ab")
    for client_id in IDS[:5_000]:
        assert arm_for(segments, bucket(namespace, client_id)) == old_arm(client_id, share)
        assert assign_arm(client_id, share) == old_arm(client_id, share)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.7, 1 / 3])
def test_ab_boosting_range_ends_at_exactly_the_share(share):
    segments = ab_segments(share)
    if share > 0:
        assert segments["boosting"] == [(0.0, share)]
    assert segments["bagging"] == [(share, 1.0)]


def test_bucket_just_below_the_boundary_stays_boosting():
    share = 0.3
    below = math.nextafter(share, 0.0)
    assert arm_for(ab_segments(share), below) == "boosting"
    assert arm_for(ab_segments(share), share) == "bagging"


# --- bucket and namespaces -----------------------------------------------------------------------


def test_bucket_is_the_top_53_bits_of_sha256_of_namespace_and_id():
    digest = hashlib.sha256(b"ns:alice").digest()
    assert bucket("ns:", "alice") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert bucket("chorus-ab-v1:", "alice") == client_bucket("alice")


def test_experiment_namespaces():
    assert experiment_namespace("ab") == "chorus-ab-v1:"
    assert experiment_namespace("light-vote") == "chorus-exp-v1:light-vote:"
    # Each experiment hashes independently: agreement of halves is about 50%, not 100%.
    first = [bucket(experiment_namespace("one"), i) < 0.5 for i in IDS]
    second = [bucket(experiment_namespace("two"), i) < 0.5 for i in IDS]
    agree = sum(a == b for a, b in zip(first, second, strict=True))
    assert within_4_sigma(agree, len(IDS), 0.5)


def test_buckets_are_uniform():
    values = [bucket("u:", i) for i in IDS]
    assert all(0.0 <= v < 1.0 for v in values)
    for low in (0.0, 0.25, 0.5, 0.75):
        count = sum(low <= v < low + 0.25 for v in values)
        assert within_4_sigma(count, len(values), 0.25)


# --- initial_segments, arm_for, shares -----------------------------------------------------------


def test_initial_segments_are_contiguous_in_order_and_normalised():
    segments = initial_segments({"a": 2, "b": 1, "c": 1}, order=["c", "a", "b"])
    assert segments == {"c": [(0.0, 0.25)], "a": [(0.25, 0.75)], "b": [(0.75, 1.0)]}
    assert shares(segments) == {"c": 0.25, "a": 0.5, "b": 0.25}
    assert initial_segments({"a": 1, "b": 1}) == {"a": [(0.0, 0.5)], "b": [(0.5, 1.0)]}


def test_zero_weight_arms_keep_no_range():
    segments = initial_segments({"a": 0, "b": 1, "c": 0})
    assert segments == {"a": [], "b": [(0.0, 1.0)], "c": []}
    assert arm_for(segments, 0.0) == "b"
    assert arm_for(segments, math.nextafter(1.0, 0.0)) == "b"


def test_last_range_ends_at_exactly_one():
    segments = initial_segments({f"arm{i}": 0.1 for i in range(10)})
    assert_partition(segments)


@pytest.mark.parametrize(
    ("weights", "order"),
    [
        ({}, None),
        ({"a": -1, "b": 2}, None),
        ({"a": float("nan")}, None),
        ({"a": float("inf")}, None),
        ({"a": 0, "b": 0}, None),
        ({"a": True}, None),
        ({"a": "1"}, None),
        ({"": 1}, None),
        ({"a": 10**400}, None),
        ({"a": 1e308, "b": 1e308}, None),
        ({"a": 1, "b": 1}, ["a"]),
        ({"a": 1, "b": 1}, ["a", "a"]),
        ({"a": 1, "b": 1}, ["a", "c"]),
    ],
)
def test_bad_weights_and_orders_are_refused(weights, order):
    with pytest.raises(ValueError):
        initial_segments(weights, order)


def test_arm_for_refuses_points_outside_the_unit_interval():
    segments = initial_segments({"a": 1})
    for x in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError):
            arm_for(segments, x)
    with pytest.raises(ValueError):
        arm_for({"a": []}, 0.5)


# --- rebalance: minimal movement -----------------------------------------------------------------


def assignment(segments, namespace="chorus-exp-v1:t:"):
    return {i: arm_for(segments, bucket(namespace, i)) for i in IDS}


def test_moving_weight_from_a_to_c_moves_only_clients_of_a_all_to_c():
    before_segments = initial_segments({"a": 0.5, "b": 0.3, "c": 0.2})
    after_segments = rebalance(before_segments, {"a": 0.3, "b": 0.3, "c": 0.4})
    assert_partition(after_segments)
    assert shares(after_segments) == pytest.approx({"a": 0.3, "b": 0.3, "c": 0.4}, abs=1e-12)
    before, after = assignment(before_segments), assignment(after_segments)
    moved = [i for i in IDS if before[i] != after[i]]
    assert all(before[i] == "a" and after[i] == "c" for i in moved)
    assert within_4_sigma(len(moved), len(IDS), 0.2)


def test_canary_ramp_from_10_to_20_percent_moves_about_10_percent_all_to_the_canary():
    before_segments = initial_segments({"base": 0.9, "canary": 0.1}, order=["canary", "base"])
    after_segments = rebalance(before_segments, {"base": 0.8, "canary": 0.2})
    before, after = assignment(before_segments), assignment(after_segments)
    moved = [i for i in IDS if before[i] != after[i]]
    assert all(before[i] == "base" and after[i] == "canary" for i in moved)
    assert within_4_sigma(len(moved), len(IDS), 0.1)
    assert after_segments["canary"][0] == (0.0, 0.1)  # the canary's original clients stay


def test_ramping_back_restores_the_original_ranges():
    start = initial_segments({"base": 0.9, "canary": 0.1}, order=["canary", "base"])
    up = rebalance(start, {"base": 0.8, "canary": 0.2})
    assert rebalance(up, {"base": 0.9, "canary": 0.1}) == start


def test_new_arm_only_takes_from_the_arms_that_shrink():
    start = initial_segments({"a": 0.5, "b": 0.5})
    after = rebalance(start, {"a": 0.5, "b": 0.25, "new": 0.25})
    assert after["a"] == start["a"]
    before, later = assignment(start), assignment(after)
    moved = [i for i in IDS if before[i] != later[i]]
    assert all(before[i] == "b" and later[i] == "new" for i in moved)


def test_zero_weight_and_missing_arms_lose_everything():
    start = initial_segments({"a": 0.4, "b": 0.3, "c": 0.3})
    after = rebalance(start, {"a": 0.5, "b": 0})
    assert after["b"] == []
    assert "c" not in after
    assert after == {"a": [(0.0, 1.0)], "b": []}


def test_adjacent_ranges_of_one_arm_are_merged():
    start = initial_segments({"a": 0.5, "b": 0.5})
    after = rebalance(start, {"a": 1.0, "b": 0.0})
    assert after == {"a": [(0.0, 1.0)], "b": []}


def test_unchanged_weights_leave_segments_unchanged():
    start = initial_segments({"a": 0.2, "b": 0.3, "c": 0.5})
    assert rebalance(start, {"a": 2, "b": 3, "c": 5}) == start


def test_rebalance_accepts_json_shaped_segments():
    stored = {"a": [[0.0, 0.5]], "b": [[0.5, 1.0]]}
    assert rebalance(stored, {"a": 1, "b": 3}) == {"a": [(0.0, 0.25)], "b": [(0.25, 1.0)]}


def test_many_random_rebalances_stay_a_partition_with_the_right_shares():
    rng = random.Random(11)
    segments = initial_segments({"a": 1})
    for _ in range(500):
        weights = {arm: rng.choice([0.0, rng.random()]) for arm in "abcde"}
        if sum(weights.values()) == 0:
            continue
        previous = segments
        segments = rebalance(previous, weights)
        assert_partition(segments)
        total = sum(weights.values())
        got = shares(segments)
        for arm, weight in weights.items():
            assert got[arm] == pytest.approx(weight / total, abs=1e-9)
        # Minimal movement: a point changes arm only from a shrinking arm to a growing one.
        old_shares = shares(previous)
        for x in (rng.random() for _ in range(50)):
            was, now = arm_for(previous, x), arm_for(segments, x)
            if was != now:
                assert got.get(was, 0.0) < old_shares.get(was, 0.0) + 1e-9
                assert got[now] > old_shares.get(now, 0.0) - 1e-9
        assert sum(len(r) for r in segments.values()) <= 40


@pytest.mark.parametrize(
    "segments",
    [
        {"a": [(0.0, 0.6)], "b": [(0.5, 1.0)]},
        {"a": [(-0.1, 1.0)]},
        {"a": [(0.0, 1.5)]},
        {"a": [(0.5,)]},
        {"a": ["xy"]},
    ],
)
def test_malformed_segments_are_refused(segments):
    with pytest.raises(ValueError):
        rebalance(segments, {"a": 1})


def test_rebalance_fills_gaps_in_hand_made_segments():
    after = rebalance({"a": [(0.0, 0.5)]}, {"a": 0.5, "b": 0.5})
    assert after == {"a": [(0.0, 0.5)], "b": [(0.5, 1.0)]}
