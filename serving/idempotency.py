"""``Idempotency-Key`` on predict: a client that lost an answer retries with the same key and gets
the first answer back, and nothing new is recorded (no second prediction row, no second count in
any statistic). Keys live in the database (``store.idempotency``), so the retry may reach any
worker or instance. The key is scoped to the client (its ``client_id``, else its address), so
two clients choosing the same key never see each other's answers.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from serving.errors import Conflict, InvalidRequest
from store.db import Store
from store.idempotency import claim_key, complete_key, release_key

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
#: Visible ASCII, 1-128 characters (a UUID, a ULID, a client's request counter...).
_SANE_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


class KeyReused(InvalidRequest):
    """The key was used before for a different request (HTTP 400)."""


class KeyInFlight(Conflict):
    """The first request with this key is still being answered (HTTP 409)."""


def check_key(raw: str | None) -> str | None:
    """The header's key, None when absent; a 400 when it is empty, too long or not ASCII."""
    if raw is None:
        return None
    key = raw.strip()
    if not _SANE_KEY.fullmatch(key):
        raise InvalidRequest(
            f"{HEADER} must be 1-128 visible ASCII characters (a UUID is a good choice).",
            field=HEADER,
        )
    return key


def scope_of(client_id: str | None, address: str) -> str:
    """Whose key it is: the client id when given, else the client's address (hashed)."""
    who = f"client:{client_id}" if client_id else f"address:{address}"
    return hashlib.sha256(who.encode("utf-8")).hexdigest()


def fingerprint(data: bytes, strategy: str, client_id: str | None, features: str | None) -> str:
    """What was asked, so a key reused for another image or strategy is refused."""
    digest = hashlib.sha256()
    for part in (hashlib.sha256(data).hexdigest(), strategy, client_id or "", features or ""):
        digest.update(part.encode("utf-8") + b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class Answer:
    """A predict answer: the body, whether it is a replay, and the fresh result (if any)."""

    body: dict[str, Any]
    replayed: bool
    served: Any = None


class Idempotency:
    """Claims a key before predicting, stores the answer after, replays it on a retry."""

    def __init__(self, db: Store, ttl_seconds: float) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)

    def run(self, scope: str, key: str, asked: str, predict: Callable[[], Any]) -> Answer:
        """The stored answer for (scope, key), or ``predict()``'s, stored for the retries."""
        for _attempt in range(2):  # a claim released by a failed holder in between: claim again
            with self.db.session() as session:
                claim = claim_key(session, scope, key, asked, self.ttl)
            if claim.claimed:
                return self._first(scope, key, predict)
            if claim.fingerprint is None:
                continue
            if claim.fingerprint != asked:
                raise KeyReused(
                    f"This {HEADER} was already used for a different request (another image, "
                    "strategy, client_id or features). Use a new key for a new request.",
                    field=HEADER,
                )
            if claim.body is None:
                raise KeyInFlight(
                    f"The first request with this {HEADER} is still being answered. Retry in a "
                    "moment to get its answer.",
                    field=HEADER,
                )
            log.info("idempotent replay of prediction %s", claim.body.get("prediction_id"))
            return Answer(body=claim.body, replayed=True)
        raise KeyInFlight(f"This {HEADER} is changing hands; retry in a moment.", field=HEADER)

    def _first(self, scope: str, key: str, predict: Callable[[], Any]) -> Answer:
        """Serve the claimed request; a failure releases the key so a retry is served anew."""
        try:
            served = predict()
        except BaseException:
            with self.db.session() as session:
                release_key(session, scope, key)
            raise
        with self.db.session() as session:
            complete_key(session, scope, key, served.body)
        return Answer(body=served.body, replayed=False, served=served)
