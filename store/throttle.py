"""Failed admin sign-ins per client address, counted in the database so every worker (and every
instance on one Postgres) enforces one limit: a per-process counter would give each of N
workers its own 100 an hour, and forget them at every restart."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from store.models import AuthFailure, utcnow


def recent_auth_failures(
    session: Session, client: str, window: timedelta, now: datetime | None = None
) -> tuple[int, datetime | None]:
    """(failures of ``client`` within ``window`` before ``now``, the oldest one's time)."""
    since = (now or utcnow()) - window
    query = select(func.count(), func.min(AuthFailure.at)).where(
        AuthFailure.client == client, AuthFailure.at > since
    )
    count, oldest = session.execute(query).one()
    session.commit()  # end the read transaction: no snapshot or lock outlives the check
    return int(count or 0), oldest


def failure_at(
    session: Session, client: str, window: timedelta, rank: int, now: datetime | None = None
) -> datetime | None:
    """The time of ``client``'s ``rank``-th oldest failure within ``window`` (0: the oldest):
    past the limit by k, the address is free again when its k-th oldest failure ages out."""
    since = (now or utcnow()) - window
    query = (
        select(AuthFailure.at)
        .where(AuthFailure.client == client, AuthFailure.at > since)
        .order_by(AuthFailure.at)
        .offset(max(0, rank))
        .limit(1)
    )
    at = session.execute(query).scalar_one_or_none()
    session.commit()  # end the read transaction, as recent_auth_failures does
    return at


def record_auth_failure(
    session: Session, client: str, window: timedelta, now: datetime | None = None
) -> None:
    """Keep one failure of ``client``; failures older than ``window`` (anyone's) are deleted."""
    now = now or utcnow()
    try:
        session.execute(delete(AuthFailure).where(AuthFailure.at <= now - window))
        session.add(AuthFailure(client=client[:64], at=now))
        session.commit()
    except BaseException:
        session.rollback()
        raise
