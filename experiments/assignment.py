"""Pick the arm (Bagging or Boosting) that serves an A/B request.

Without a client id the arm is drawn at random. With one, the arm is a pure function of the id
(a salted sha256 mapped to [0, 1)), so a returning client always sees the same arm, and over many
ids the share of Boosting is still ``boosting_share``.
"""

from __future__ import annotations

import hashlib
import random

ARMS: tuple[str, str] = ("bagging", "boosting")

# Different prefixes, so the stored hash of an id cannot be used to recompute its arm bucket and
# changing the assignment namespace (a new experiment) does not change stored hashes.
_ASSIGNMENT_NAMESPACE = "chorus-ab-v1:"
_STORAGE_NAMESPACE = "chorus-client-v1:"


def _validate_share(boosting_share: float) -> float:
    """Reject shares outside [0, 1] (NaN included) before they silently skew the split."""
    try:
        share = float(boosting_share)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"boosting_share must be a number in [0, 1], got {boosting_share!r}"
        ) from exc
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"boosting_share must be in [0, 1], got {boosting_share!r}")
    return share


def client_bucket(client_id: str) -> float:
    """Map a client id to a uniform number in [0, 1) that never changes for that id."""
    digest = hashlib.sha256((_ASSIGNMENT_NAMESPACE + client_id).encode("utf-8")).digest()
    # The top 53 bits fit a float exactly, so the result is uniform and strictly below 1.0.
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign_arm(
    client_id: str | None,
    boosting_share: float = 0.5,
    rng: random.Random | None = None,
) -> str:
    """Return "bagging" or "boosting": sticky for a known client id, random otherwise.

    ``boosting_share`` is P(boosting) (``AB_SPLIT``). An empty or blank client id counts as
    unknown, so it does not pin every anonymous caller to one arm. Without ``rng`` the module-level
    ``random`` functions are used because Python reseeds them after ``fork`` (gunicorn's preload),
    whereas a private ``random.Random`` made at import would repeat the same draws in every worker.
    """
    share = _validate_share(boosting_share)
    if client_id is None or not client_id.strip():
        draw = rng.random() if rng is not None else random.random()
    else:
        draw = client_bucket(client_id)
    return ARMS[1] if draw < share else ARMS[0]


def hash_client_id(client_id: str) -> str:
    """Return the sha256 hex digest of a namespaced client id, so raw ids are never stored."""
    return hashlib.sha256((_STORAGE_NAMESPACE + client_id).encode("utf-8")).hexdigest()
