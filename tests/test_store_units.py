"""Unit-level aggregates (``store.units``) against the same numbers counted row by row in Python."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

import store
from store.db import make_engine
from store.migrate import upgrade
from store.units import RATIO_FIELDS
from tests.postgres import Database
from tests.test_store_definitions import T0, _predict

ARMS = ("bagging", "boosting", "stacking")


#: SQL aggregates differ by dialect: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.postgres


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    engine = make_engine(database.url())
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture
def traffic(session: Session) -> list[dict[str, Any]]:
    """500 requests of experiment ``split``: 40 clients and anonymous ones, some failed, some
    labelled, some routed by a pause; plus rows that must never count (shadow runs, another
    experiment, direct traffic). Returns what was written, for counting by hand."""
    rng = random.Random(7)
    written = []
    for i in range(500):
        client = rng.choice([None, None, *[f"client-{k}" for k in range(40)]])
        arm = rng.choice(ARMS)
        failed = rng.random() < 0.05
        reason = "paused" if rng.random() < 0.1 else "sticky"
        row = _predict(
            session,
            i,
            arm,
            client_hash=client,
            route_reason=reason,
            error="boom" if failed else None,
            class_index=None if failed else 1,
        )
        label = rng.random() < 0.7
        correct = rng.random() < 0.8
        if label:
            store.record_feedback(session, row, 1 if correct else 2)
        written.append(
            {
                "id": row.id,
                "arm": arm,
                "client": client,
                "at": i,
                "ok": not failed,
                "reason": reason,
                "labelled": label and not failed,
                "correct": label and correct and not failed,
            }
        )
        if i % 10 == 0:  # a shadow run of this request: never a unit of the experiment
            shadow = _predict(session, i, "cascade", shadow_of=row.id, client_hash=client)
            store.record_feedback(session, shadow, 1)
    for i in range(30):
        other = _predict(session, i, "bagging", experiment="other", client_hash="client-1")
        store.record_feedback(session, other, 1)
        _predict(session, i, "bagging", experiment=None, strategy="bagging")
    return written


def _by_hand(rows: list[dict[str, Any]], by_client: bool = True) -> dict[str, dict[str, int]]:
    """``unit_outcomes`` counted one row at a time."""
    units: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        unit = (r["client"] or r["id"]) if by_client else r["id"]
        numbers = units[(r["arm"], unit)]
        numbers[0] += r["ok"]
        numbers[1] += r["labelled"]
        numbers[2] += r["correct"]
    out: dict[str, dict[str, int]] = {}
    for arm in sorted({a for a, _ in units}):
        mine = [v for (a, _), v in units.items() if a == arm]
        labelled = [(m, d) for _, d, m in mine if d > 0]
        out[arm] = {
            "units": sum(1 for served, _, _ in mine if served > 0),
            "n": len(labelled),
            "m_sum": sum(m for m, _ in labelled),
            "m_sum_squares": sum(m * m for m, _ in labelled),
            "d_sum": sum(d for _, d in labelled),
            "d_sum_squares": sum(d * d for _, d in labelled),
            "m_d_sum_of_products": sum(m * d for m, d in labelled),
        }
    return out


def _units(counted: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The unit-level part of ``unit_outcomes``' numbers."""
    return {arm: {key: o[key] for key in ("units", *RATIO_FIELDS)} for arm, o in counted.items()}


def test_unit_outcomes_count_clients_and_anonymous_requests(session, traffic):
    assert _units(store.unit_outcomes(session, "split")) == _by_hand(traffic)
    assert store.unit_outcomes(session, "nope") == {}


@pytest.mark.parametrize(("since", "routed_only"), [(None, False), (200, True), (None, True)])
def test_unit_outcomes_carry_arm_outcomes_request_counts(session, traffic, since, routed_only):
    """The one pass the results page makes gives ``arm_outcomes``' numbers too."""
    at = None if since is None else T0 + timedelta(seconds=since)
    requests = store.arm_outcomes(session, "split", at, routed_only)
    units = store.unit_outcomes(session, "split", at, routed_only)
    assert set(units) == set(requests)
    for arm, o in requests.items():
        assert {key: units[arm][key] for key in o} == pytest.approx(o)


def test_unit_scopes_read_several_subsets_at_once(session, traffic):
    since = T0 + timedelta(seconds=300)
    scopes = store.unit_scopes(
        session,
        "split",
        {"all": store.routing_scope(), "late": store.routing_scope(since, routed_only=True)},
    )
    assert scopes["all"] == store.unit_outcomes(session, "split")
    assert scopes["late"] == store.unit_outcomes(session, "split", since, routed_only=True)


def test_without_clients_every_request_is_a_unit(session, traffic):
    """Routers that route every request anew randomise requests, not clients."""
    counted = store.unit_outcomes(session, "split", by_client=False)
    assert _units(counted) == _by_hand(traffic, by_client=False)
    assert sum(o["units"] for o in counted.values()) == sum(r["ok"] for r in traffic)


def test_since_and_routed_only_select_rows_as_arm_outcomes_does(session, traffic):
    since = T0 + timedelta(seconds=200)
    kept = [r for r in traffic if r["at"] >= 200 and r["reason"] != "paused"]
    assert _units(store.unit_outcomes(session, "split", since, routed_only=True)) == _by_hand(kept)
    requests = store.arm_outcomes(session, "split", since, routed_only=True)
    units = store.unit_outcomes(session, "split", since, routed_only=True)
    for arm, o in units.items():  # the same rows: labelled and correct totals agree
        assert (o["d_sum"], o["m_sum"]) == (requests[arm]["labelled"], requests[arm]["correct"])
        assert o["units"] <= requests[arm]["served"]


def test_clients_are_fewer_units_than_their_requests(session, traffic):
    units = store.unit_outcomes(session, "split")
    requests = store.arm_outcomes(session, "split")
    for arm in ARMS:
        assert units[arm]["units"] < requests[arm]["served"]


@pytest.mark.parametrize("buckets", [1, 7, 50, 1000])
def test_unit_series_adds_up_to_the_statistics_after_every_bucket(session, traffic, buckets):
    """The running sums of the increments equal the statistics recounted from scratch on the
    outcomes up to each bucket's end (NTILE: the first N mod k buckets hold one more)."""
    increments = store.unit_series(session, "split", buckets)
    labelled = sorted((r for r in traffic if r["labelled"]), key=lambda r: (r["at"], r["id"]))
    total = len(labelled)
    k = min(buckets, total)
    sizes = [total // k + (1 if i < total % k else 0) for i in range(k)]
    ends = [sum(sizes[: i + 1]) for i in range(k)]
    assert max(r["bucket"] for r in increments) == k
    running: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(RATIO_FIELDS, 0))
    seen = 0
    for bucket, end in enumerate(ends, start=1):
        for r in (r for r in increments if r["bucket"] == bucket):
            seen += r["labelled"]
            for key in RATIO_FIELDS:
                running[r["arm"]][key] += r[key]
        assert seen == end
        expected = _by_hand(labelled[:end])
        for arm, numbers in expected.items():
            assert running[arm] == {key: numbers[key] for key in RATIO_FIELDS}, (bucket, arm)


def test_unit_series_of_an_experiment_without_labels_is_empty(session):
    _predict(session, 0, "bagging", client_hash="a")
    assert store.unit_series(session, "split") == []


def test_recent_latencies_are_each_arms_newest_successful_ones(session, traffic):
    recent = store.recent_latencies(session, "split", [*ARMS, "nobody"], 5)
    assert recent["nobody"] == []
    everything = store.arm_latencies(session, "split")
    for arm in ARMS:
        assert recent[arm] == everything[arm][:5]  # newest first, failures left out
