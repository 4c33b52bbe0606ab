"""Consistent hashing of clients onto arms, with minimal movement when the weights change.

Every client id maps to a fixed point in [0, 1) (:func:`bucket`): the top 53 bits of
HMAC-SHA256 keyed by the experiment's own random server secret (``experiments.assignment_key``,
32 bytes made when the experiment is created and never shown). Without the key nobody can tell
which arm an id lands in, so a client cannot pick its arm by choosing ids; with it the point is
the same on every request, so assignment stays sticky, and separate keys make a client's arms
independent across experiments. An experiment owns a partition of [0, 1) into ranges, one or
more per arm (:data:`Segments`), and a client is served by the arm whose range holds its point
(:func:`arm_for`). Changing the weights (:func:`rebalance`) trims only the arms that lose share
and hands exactly the freed ranges to the arms that gain, so a client moves only when its arm
shrank, and then only to an arm that grew: a 10% → 20% canary ramp moves about 10% of clients,
all of them to the canary, and nobody else.

The first release hashed ``"chorus-ab-v1:" + id`` with plain sha256: the namespace is public,
so anyone could compute an id's arm and forge a result. That formula is gone; the built-in
``ab`` got a random key in migration 0003, so its clients were reassigned once. Its segments
still put Boosting on ``[0, AB_SPLIT)`` (:func:`ab_segments`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import numbers
import secrets
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

Segment = tuple[float, float]
"""A half-open range ``[low, high)`` inside [0, 1)."""

Segments = dict[str, list[Segment]]
"""Arm -> its ranges, sorted and non-overlapping; together the ranges of all arms cover [0, 1)."""

ARMS: tuple[str, str] = ("bagging", "boosting")
"""The first release's A/B arms (the built-in ``ab`` experiment), control first."""

AB_SEGMENT_ORDER: tuple[str, str] = ("boosting", "bagging")
"""Range order of ``ab``: Boosting on ``[0, share)`` reproduces the first release's split."""

TOLERANCE = 1e-12
"""Share differences below this are float rounding, not a change of weights."""

#: Bytes of a per-experiment assignment key: as long as HMAC-SHA256's output (RFC 2104's minimum).
KEY_BYTES = 32
# The stored client hash is a different function (plain sha256 with its own prefix), so the
# stored hash of an id never reveals its bucket, and a new key does not change stored hashes.
_STORAGE_NAMESPACE = "chorus-client-v1:"


def new_key() -> bytes:
    """A fresh random assignment key for a new experiment (secrets: unpredictable)."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: bytes) -> bytes:
    """Refuse keys too short to be secret, so a bug cannot silently make arms guessable."""
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("an assignment key must be at least 16 random bytes")
    return bytes(key)


def bucket(key: bytes, client_id: str) -> float:
    """Map a client id to a uniform point in [0, 1) that only the key's holder can compute."""
    digest = hmac.new(check_key(key), client_id.encode("utf-8"), hashlib.sha256).digest()
    # The top 53 bits fit a float exactly, so the result is uniform and strictly below 1.0.
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Refuse weights that cannot define a split (negative, NaN, inf, bool, all zero)."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("weights must be a non-empty mapping of arm name to weight")
    checked: dict[str, float] = {}
    for arm, weight in weights.items():
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"arm names must be non-empty strings, got {arm!r}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(f"weight of {arm!r} must be a number >= 0, got {weight!r}")
        try:
            value = float(weight)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"weight of {arm!r} must be a finite number >= 0, got {weight!r}")
        checked[arm] = value
    try:
        total = math.fsum(checked.values())
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        raise ValueError("weights are too large to add up; send shares such as 0.6 and 0.4")
    if total <= 0.0:
        raise ValueError("at least one weight must be > 0")
    return checked


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale weights to sum to 1; weights already summing to 1 (within rounding) are kept as given.

    Keeping them unchanged is what makes ``{"bagging": 1 - s, "boosting": s}`` put the boundary at
    exactly ``s`` (dividing by a sum of 1 ± 1 ulp could move it by one ulp).
    """
    checked = validate_weights(weights)
    total = math.fsum(checked.values())
    if abs(total - 1.0) <= TOLERANCE:
        return checked
    return {arm: weight / total for arm, weight in checked.items()}


def _clean(segments: Mapping[str, Sequence[Sequence[float]]]) -> list[tuple[float, float, str]]:
    """Validate segments (also as JSON lists) and return ``(low, high, arm)`` sorted by ``low``."""
    if not isinstance(segments, Mapping):
        raise ValueError("segments must be a mapping of arm name to a list of [low, high) ranges")
    pieces: list[tuple[float, float, str]] = []
    for arm, ranges in segments.items():
        for item in ranges:
            try:
                low, high = (float(v) for v in item)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"segment of {arm!r} must be [low, high], got {item!r}") from exc
            if not (0.0 <= low <= high <= 1.0):
                raise ValueError(f"segment of {arm!r} must lie in [0, 1], got {item!r}")
            if high > low:
                pieces.append((low, high, arm))
    pieces.sort()
    for (_, high, arm), (low, _, other) in zip(pieces, pieces[1:], strict=False):
        if low < high - TOLERANCE:
            raise ValueError(f"segments of {arm!r} and {other!r} overlap at {low!r}")
    return pieces


def _assemble(pieces: list[tuple[float, float, str]], arms: Sequence[str]) -> Segments:
    """Close rounding gaps, end exactly at 1.0, merge neighbours of one arm, key by ``arms``."""
    pieces = sorted(p for p in pieces if p[1] > p[0])
    merged: list[list[float | str]] = []
    previous = 0.0
    for _, high, arm in pieces:
        low = previous  # closes rounding gaps and overlaps; real gaps were handed out already
        if high <= low:
            continue
        if merged and merged[-1][2] == arm and merged[-1][1] == low:
            merged[-1][1] = high
        else:
            merged.append([low, high, arm])
        previous = high
    if merged:
        merged[0][0] = 0.0
        merged[-1][1] = 1.0
    result: Segments = {arm: [] for arm in arms}
    for low, high, arm in merged:
        result.setdefault(str(arm), []).append((float(low), float(high)))
    return result


def initial_segments(weights: Mapping[str, float], order: Sequence[str] | None = None) -> Segments:
    """Lay the arms on [0, 1) as contiguous ranges in ``order``, each as wide as its weight."""
    target = _normalised(weights)
    arms = list(target) if order is None else list(order)
    if sorted(arms) != sorted(target) or len(set(arms)) != len(arms):
        raise ValueError(f"order must list every weighted arm once, got {list(arms)!r}")
    pieces: list[tuple[float, float, str]] = []
    low = 0.0
    for arm in arms:
        share = target[arm]
        if share <= 0.0:
            continue
        pieces.append((low, low + share, arm))
        low += share
    return _assemble(pieces, arms)


def rebalance(segments: Segments, weights: Mapping[str, float]) -> Segments:
    """Move to new weights while moving as few clients as possible.

    Arms that lose share give up exactly their excess, trimmed from the high end of their ranges;
    the freed ranges (and any gap in ``segments``) go, lowest first, to the arms that gain, in the
    order of ``weights``. Arms missing from ``weights`` or weighted 0 give up everything; arms new
    to ``segments`` start with nothing. The result is keyed by the arms of ``weights``.
    """
    target = _normalised(weights)
    pieces = _clean(segments)
    held: dict[str, list[Segment]] = {}
    for low, high, arm in pieces:
        held.setdefault(arm, []).append((low, high))
    current = {arm: math.fsum(h - lo for lo, h in ranges) for arm, ranges in held.items()}

    # Uncovered parts of [0, 1) (only from hand-made segments) are free for the gaining arms.
    freed: list[Segment] = []
    edge = 0.0
    for low, high, _ in pieces:
        if low > edge + TOLERANCE:
            freed.append((edge, low))
        edge = max(edge, high)
    if edge < 1.0 - TOLERANCE:
        freed.append((edge, 1.0))

    kept: dict[str, list[Segment]] = {}
    for arm, ranges in held.items():
        share = target.get(arm, 0.0)
        if share <= 0.0:
            freed.extend(ranges)
            continue
        excess = current[arm] - share
        ranges = list(ranges)
        while excess > TOLERANCE and ranges:
            low, high = ranges[-1]
            if high - low <= excess + TOLERANCE:
                freed.append(ranges.pop())
                excess -= high - low
            else:
                cut = high - excess
                ranges[-1] = (low, cut)
                freed.append((cut, high))
                excess = 0.0
        kept[arm] = ranges

    freed.sort()
    gainers = [
        (arm, share - current.get(arm, 0.0))
        for arm, share in target.items()
        if share - current.get(arm, 0.0) > TOLERANCE
    ]
    for index, (arm, need) in enumerate(gainers):
        last = index == len(gainers) - 1
        taken = kept.setdefault(arm, [])
        while freed and (last or need > TOLERANCE):
            low, high = freed[0]
            if last or high - low <= need + TOLERANCE:
                taken.append(freed.pop(0))
                need -= high - low
            else:
                taken.append((low, low + need))
                freed[0] = (low + need, high)
                need = 0.0
    if freed:
        # Only float dust can be left here; _assemble's gap closing gives it to a neighbour.
        log.debug("rebalance left %d rounding-sized ranges unassigned", len(freed))

    out = [(low, high, arm) for arm, ranges in kept.items() for low, high in ranges]
    return _assemble(out, list(target))


def arm_for(segments: Segments, x: float) -> str:
    """Return the arm whose range holds the point ``x`` (a client's bucket or a random draw)."""
    if not 0.0 <= x < 1.0:
        raise ValueError(f"x must be in [0, 1), got {x!r}")
    nearest: tuple[float, str] | None = None
    for arm, ranges in segments.items():
        for low, high in ranges:
            if low <= x < high:
                return arm
            distance = min(abs(x - low), abs(x - high))
            if nearest is None or distance < nearest[0]:
                nearest = (distance, arm)
    if nearest is None:
        raise ValueError("segments hold no range; give at least one arm a weight > 0")
    return nearest[1]  # a rounding gap: the closest range serves


def shares(segments: Segments) -> dict[str, float]:
    """Return each arm's fraction of [0, 1): the share of clients (and of draws) it serves."""
    return {arm: math.fsum(high - low for low, high in ranges) for arm, ranges in segments.items()}


def hash_client_id(client_id: str) -> str:
    """Return the sha256 hex digest of a namespaced client id, so raw ids are never stored."""
    return hashlib.sha256((_STORAGE_NAMESPACE + client_id).encode("utf-8")).hexdigest()


# The built-in ``ab`` split.


def _validate_share(boosting_share: float) -> float:
    """Reject shares outside [0, 1] (NaN included) before they silently skew the split."""
    if isinstance(boosting_share, bool):
        raise ValueError(f"boosting_share must be a number in [0, 1], got {boosting_share!r}")
    try:
        share = float(boosting_share)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"boosting_share must be a number in [0, 1], got {boosting_share!r}"
        ) from exc
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"boosting_share must be in [0, 1], got {boosting_share!r}")
    return share


def ab_segments(boosting_share: float) -> Segments:
    """The built-in ``ab`` split: Boosting on ``[0, share)``, Bagging on ``[share, 1)``."""
    share = _validate_share(boosting_share)
    return {arm: list(ranges) for arm, ranges in _ab_segments(share).items()}


@functools.lru_cache(maxsize=32)
def _ab_segments(share: float) -> Segments:
    """Cached: the same split is asked for often (a copy is handed out)."""
    return initial_segments(
        {"bagging": 1.0 - share, "boosting": share}, order=list(AB_SEGMENT_ORDER)
    )
