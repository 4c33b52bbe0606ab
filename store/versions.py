"""Model-version activations: the newest row names the version every worker should serve.

Reading the active version is one indexed row, cheap enough for each worker to poll every
second; the rows that came before are the history an operator reads (who, when, from what).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ModelActivation, utcnow


@dataclass(frozen=True)
class Activation:
    """One activation as read (plain values: usable after its session ended)."""

    id: int
    version: str
    previous: str | None
    actor: str
    at: datetime
    paused: tuple[str, ...]

    @classmethod
    def of(cls, row: ModelActivation) -> Activation:
        """Copy a row's values out of the ORM."""
        return cls(row.id, row.version, row.previous, row.actor, row.at, tuple(row.paused or ()))


def activations(session: Session, limit: int = 50) -> list[Activation]:
    """The most recent activations, newest first."""
    try:
        query = select(ModelActivation).order_by(ModelActivation.id.desc()).limit(limit)
        return [Activation.of(row) for row in session.scalars(query)]
    finally:
        session.rollback()  # end the read transaction: no snapshot outlives the poll


def active_activation(session: Session) -> Activation | None:
    """The newest activation, or None when no version was ever activated through the API."""
    newest = activations(session, limit=1)
    return newest[0] if newest else None


def record_activation(
    session: Session,
    version: str,
    previous: str | None,
    actor: str,
    paused: list[str] | None = None,
) -> Activation:
    """Store one activation (the new active version) with who made it and what it paused."""
    row = ModelActivation(
        version=version[:64],
        previous=previous[:64] if previous else None,
        actor=actor[:64],
        at=utcnow(),
        paused=paused or None,
    )
    try:
        session.add(row)
        session.flush()
        stored = Activation.of(row)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return stored
