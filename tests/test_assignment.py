"""Keyed consistent hashing onto ranges: sticky per client, unpredictable without the key,
minimal movement, the ``ab`` layout kept."""

import hashlib
import hmac
import math
import random

import pytest

from experiments.assignment import (
    ARMS,
    KEY_BYTES,
    ab_segments,
    arm_for,
    bucket,
    hash_client_id,
    initial_segments,
    new_key,
    rebalance,
    shares,
)

IDS = [f"client-{i}" for i in range(20_000)]
KEY = bytes(range(32))


def old_bucket(client_id: str) -> float:
    """The first release's public formula (sha256 of a namespace in the source), copied
    verbatim so that its removal is tested, not assumed."""
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


def test_arms_are_bagging_then_boosting():
    assert ARMS == ("bagging", "boosting")


# --- keyed buckets -------------------------------------------------------------------------------


def test_bucket_is_the_top_53_bits_of_hmac_sha256_keyed_by_the_experiment_secret():
    digest = hmac.new(KEY, b"alice", hashlib.sha256).digest()
    assert bucket(KEY, "alice") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53


@pytest.mark.parametrize("client_id", ["alice", "client-42", "ünïcode-☃", "x" * 500])
def test_same_key_and_id_always_give_the_same_point(client_id):
    assert len({bucket(KEY, client_id) for _ in range(100)}) == 1
    assert 0.0 <= bucket(KEY, client_id) < 1.0


def test_new_keys_are_random_and_32_bytes():
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == KEY_BYTES == 32 for k in keys)


@pytest.mark.parametrize("key", [b"", b"short", "a string key of enough length", None])
def test_short_or_missing_keys_are_refused(key):
    with pytest.raises(ValueError, match="assignment key"):
        bucket(key, "alice")


def test_separate_keys_split_clients_independently():
    first, second = new_key(), new_key()
    one = [bucket(first, i) < 0.5 for i in IDS]
    two = [bucket(second, i) < 0.5 for i in IDS]
    agree = sum(a == b for a, b in zip(one, two, strict=True))
    assert within_4_sigma(agree, len(IDS), 0.5)


def test_the_public_first_release_formula_no_longer_predicts_the_arm():
    """The reviewer's forgery: ids chosen to land in Boosting under the known sha256 namespace
    land anywhere under a secret key."""
    segments = ab_segments(0.5)
    chosen = [i for i in IDS if old_arm(i, 0.5) == "boosting"][:2_000]
    arms = [arm_for(segments, bucket(new_key(), i)) for i in chosen]
    assert within_4_sigma(arms.count("boosting"), len(chosen), 0.5)
    # Nor is a keyed point a function of the stored (public-prefix) client hash.
    assert all(bucket(KEY, i) != old_bucket(i) for i in IDS[:100])


def test_buckets_are_uniform():
    values = [bucket(KEY, i) for i in IDS]
    assert all(0.0 <= v < 1.0 for v in values)
    for low in (0.0, 0.25, 0.5, 0.75):
        count = sum(low <= v < low + 0.25 for v in values)
        assert within_4_sigma(count, len(values), 0.25)


@pytest.mark.parametrize("share", [0.5, 0.2, 0.9])
def test_distinct_client_ids_split_by_the_configured_share(share):
    segments = ab_segments(share)
    boosting = sum(arm_for(segments, bucket(KEY, i)) == "boosting" for i in IDS)
    assert within_4_sigma(boosting, len(IDS), share)


def test_lowering_the_share_only_moves_clients_from_boosting_to_bagging():
    ids = IDS[:2_000]
    at_half = {i for i in ids if arm_for(ab_segments(0.5), bucket(KEY, i)) == "boosting"}
    at_fifth = {i for i in ids if arm_for(ab_segments(0.2), bucket(KEY, i)) == "boosting"}
    assert at_fifth < at_half


# --- stored client hashes ------------------------------------------------------------------------


def test_hash_client_id_is_namespaced_sha256_hex():
    hashed = hash_client_id("alice")
    assert hashed == hashlib.sha256(b"chorus-client-v1:alice").hexdigest()
    assert len(hashed) == 64 and "alice" not in hashed
    assert hash_client_id("alice") == hashed
    assert hash_client_id("bob") != hashed


def test_stored_hash_differs_from_the_assignment_hash():
    assert hash_client_id("alice") != hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()
    assert hash_client_id("alice") != hashlib.sha256(b"alice").hexdigest()


# --- the ab layout -------------------------------------------------------------------------------

AB_SHARES = [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99, 1.0] + [
    random.Random(5).random() for _ in range(20)
]


@pytest.mark.parametrize("share", AB_SHARES)
def test_ab_segments_put_boosting_first(share):
    segments = initial_segments(
        {"bagging": 1.0 - share, "boosting": share}, order=["boosting", "bagging"]
    )
    assert segments == ab_segments(share)


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


@pytest.mark.parametrize("share", [-0.01, 1.01, float("nan"), float("inf"), "half", None, True])
def test_invalid_share_is_rejected(share):
    with pytest.raises(ValueError, match="boosting_share"):
        ab_segments(share)


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


def assignment(segments, key=KEY):
    return {i: arm_for(segments, bucket(key, i)) for i in IDS}


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
