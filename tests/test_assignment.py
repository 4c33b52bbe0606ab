"""Arm assignment: sticky per client, random otherwise, and the configured split either way."""

import hashlib
import random

import pytest

from experiments.assignment import ARMS, assign_arm, client_bucket, hash_client_id


def test_arms_are_bagging_then_boosting():
    assert ARMS == ("bagging", "boosting")


@pytest.mark.parametrize("client_id", ["alice", "client-42", "ünïcode-☃", "x" * 500])
def test_same_client_id_always_gets_the_same_arm(client_id):
    arms = {assign_arm(client_id, 0.5, rng=random.Random(seed)) for seed in range(1000)}
    assert len(arms) == 1


def test_sticky_arm_ignores_rng_and_follows_the_hash():
    bucket = client_bucket("alice")
    assert 0.0 <= bucket < 1.0
    expected = "boosting" if bucket < 0.5 else "bagging"
    assert assign_arm("alice", 0.5) == expected
    assert assign_arm("alice", 0.5, rng=random.Random(0)) == expected


def test_client_bucket_is_the_top_53_bits_of_a_namespaced_sha256():
    digest = hashlib.sha256(b"chorus-ab-v1:alice").digest()
    assert client_bucket("alice") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53


@pytest.mark.parametrize("share", [0.5, 0.2, 0.9])
def test_distinct_client_ids_split_by_the_configured_share(share):
    ids = [f"client-{i}" for i in range(20_000)]
    boosting = sum(assign_arm(client_id, share) == "boosting" for client_id in ids)
    assert boosting / len(ids) == pytest.approx(share, abs=0.02)


def test_lowering_the_share_only_moves_clients_from_boosting_to_bagging():
    ids = [f"client-{i}" for i in range(2_000)]
    at_half = {i for i in ids if assign_arm(i, 0.5) == "boosting"}
    at_fifth = {i for i in ids if assign_arm(i, 0.2) == "boosting"}
    assert at_fifth < at_half


@pytest.mark.parametrize("share", [0.5, 0.2])
def test_random_assignment_with_a_seeded_rng_gives_the_split(share):
    rng = random.Random(1234)
    draws = [assign_arm(None, share, rng=rng) for _ in range(20_000)]
    assert set(draws) == set(ARMS)
    assert draws.count("boosting") / len(draws) == pytest.approx(share, abs=0.02)


def test_random_assignment_is_reproducible_with_the_same_seed():
    rng_a, rng_b = random.Random(7), random.Random(7)
    first = [assign_arm(None, 0.5, rng=rng_a) for _ in range(200)]
    assert first == [assign_arm(None, 0.5, rng=rng_b) for _ in range(200)]
    assert set(first) == set(ARMS)


@pytest.mark.parametrize("client_id", ["", "   "])
def test_blank_client_id_is_treated_as_unknown(client_id):
    rng = random.Random(99)
    draws = [assign_arm(client_id, 0.5, rng=rng) for _ in range(2_000)]
    assert draws.count("boosting") / len(draws) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("share", "arm"),
    [(0.0, "bagging"), (1.0, "boosting")],
)
def test_extreme_shares_pin_every_request(share, arm):
    rng = random.Random(3)
    assert {assign_arm(None, share, rng=rng) for _ in range(500)} == {arm}
    assert {assign_arm(f"c{i}", share) for i in range(500)} == {arm}


def test_default_rng_is_used_without_one():
    assert {assign_arm(None) for _ in range(200)} == set(ARMS)


@pytest.mark.parametrize("share", [-0.01, 1.01, float("nan"), float("inf"), "half", None])
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
