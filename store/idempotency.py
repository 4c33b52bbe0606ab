"""Idempotency keys on predict: the first request with a key claims it, later ones with the same
key (and scope) get the stored answer. The claim is a primary-key insert, so two workers or two
instances racing on one key cannot both predict."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import IdempotentAnswer, utcnow


@dataclass(frozen=True)
class Claim:
    """What claiming a key found: ``claimed`` (go ahead), or the earlier request's state."""

    claimed: bool
    fingerprint: str | None = None
    body: dict[str, Any] | None = None


def claim_key(
    session: Session,
    scope: str,
    key: str,
    fingerprint: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> Claim:
    """Claim ``key`` for a new request, or return the earlier request's fingerprint and body
    (body None: still being served). Keys older than ``ttl`` are forgotten first."""
    now = now or utcnow()
    try:
        session.execute(delete(IdempotentAnswer).where(IdempotentAnswer.created_at <= now - ttl))
        session.add(IdempotentAnswer(scope=scope, key=key, fingerprint=fingerprint, created_at=now))
        session.commit()
        return Claim(claimed=True)
    except IntegrityError:
        session.rollback()
    query = select(IdempotentAnswer).where(
        IdempotentAnswer.scope == scope, IdempotentAnswer.key == key
    )
    row = session.scalars(query).one_or_none()
    session.commit()
    if row is None:  # the holder released it in between: the caller may simply retry
        return Claim(claimed=False)
    return Claim(claimed=False, fingerprint=row.fingerprint, body=row.body)


def complete_key(session: Session, scope: str, key: str, body: dict[str, Any]) -> None:
    """Store the answer under a claimed key, for every retry to come."""
    try:
        session.execute(
            update(IdempotentAnswer)
            .where(IdempotentAnswer.scope == scope, IdempotentAnswer.key == key)
            .values(body=body)
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise


def release_key(session: Session, scope: str, key: str) -> None:
    """Forget a claim whose request failed, so a retry is served anew."""
    try:
        session.execute(
            delete(IdempotentAnswer).where(
                IdempotentAnswer.scope == scope, IdempotentAnswer.key == key
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
