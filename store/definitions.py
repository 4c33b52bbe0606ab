"""Ensembles and experiments as rows: created, changed and deleted in short transactions.

Each function takes a ``Session`` first and commits (or rolls back) before it returns, so a
worker never holds a lock across a request. Every change to an experiment bumps its
``revision`` and writes one ``ExperimentEvent`` with the changed fields before and after, in the
same transaction as the change. A name is unique across ensembles *and* experiments: each
table's primary key guards itself, and the create transaction checks the other table after its
own INSERT (on SQLite the INSERT holds the database's write lock by then; on Postgres an
advisory lock on the name serialises creators).
"""

from __future__ import annotations

import copy
import logging
import secrets
import zlib
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.errors import ConcurrentChangeError, DefinitionNotFound, NameTakenError
from store.models import (
    ENSEMBLE_STATUSES,
    EXPERIMENT_STATUSES,
    EnsembleRow,
    ExperimentEvent,
    ExperimentRow,
    utcnow,
)
from store.rollups import SHARE_CHANGES

log = logging.getLogger(__name__)

KINDS = ("ensemble", "experiment")
#: The fields ``update_experiment`` may change (the rest are fixed at creation or its own).
EXPERIMENT_CHANGES = frozenset(
    {"state", "status", "decision", "report", "ended_at", "definition", "control"}
)
#: First key of the Postgres advisory locks on names (the second is the name's CRC-32).
_PG_NAME_LOCK_SPACE = 0x43484F53
#: Bytes of a fresh assignment key (``experiments.assignment.KEY_BYTES``).
ASSIGNMENT_KEY_BYTES = 32
#: Column widths the values must fit on Postgres (SQLite would silently store longer ones).
_WIDTHS = {"name": 64, "actor": 64, "kind": 32, "router": 32, "control": 64, "model_version": 64}


def _check_width(field: str, value: str | None) -> None:
    """Refuse a value that Postgres would refuse, with the same message on every backend."""
    if value is not None and len(value) > _WIDTHS[field]:
        raise ValueError(f"{field} must be at most {_WIDTHS[field]} characters: {value[:80]!r}")


def _check_status(status: str, allowed: tuple[str, ...], kind: str) -> None:
    """Only the documented statuses reach the database."""
    if status not in allowed:
        raise ValueError(f"an {kind}'s status is one of {', '.join(allowed)}, not {status!r}")


def _jsonable(value: Any) -> Any:
    """A value an event's JSON column can hold (datetimes as ISO 8601), copied."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _snapshot(row: EnsembleRow | ExperimentRow) -> dict[str, Any]:
    """What an event records of a whole definition (on creation and deletion)."""
    if isinstance(row, EnsembleRow):
        fields = ("definition", "status", "model_version")
    else:
        fields = ("router", "definition", "state", "status", "control", "builtin")
    return {"kind": row.kind, **{field: _jsonable(getattr(row, field)) for field in fields}}


def _lock_name(session: Session, name: str) -> None:
    """Postgres: serialise creators of one name, whose rows would go to different tables."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: the INSERT that precedes the cross-table check holds the write lock
    key = zlib.crc32(name.encode())
    session.execute(
        text("SELECT pg_advisory_xact_lock(CAST(:space AS INTEGER), CAST(:key AS INTEGER))"),
        {"space": _PG_NAME_LOCK_SPACE, "key": key - (1 << 32) if key >= 1 << 31 else key},
    )


def _name_exists(session: Session, name: str) -> bool:
    """Whether either table holds the name (read in a transaction of its own)."""
    try:
        for model in (EnsembleRow, ExperimentRow):
            if session.scalar(select(model.name).where(model.name == name)) is not None:
                return True
        return False
    finally:
        session.rollback()


def create_definition(
    session: Session,
    *,
    kind: Literal["ensemble", "experiment"],
    name: str,
    definition: dict[str, Any],
    actor: str,
    router: str | None = None,
    state: dict[str, Any] | None = None,
    status: str | None = None,
    control: str | None = None,
    model_version: str | None = None,
    builtin: bool = False,
    assignment_key: bytes | None = None,
) -> EnsembleRow | ExperimentRow:
    """Store a new ensemble or experiment and its 'created' event; a taken name raises.

    An experiment's ``assignment_key`` (its secret for sticky assignment) is drawn at random
    here unless the caller drew it; the event never records it.
    """
    for field, value in (
        ("name", name),
        ("actor", actor),
        ("router", router),
        ("control", control),
        ("model_version", model_version),
    ):
        _check_width(field, value)
    now = utcnow()
    row: EnsembleRow | ExperimentRow
    if kind == "ensemble":
        status = status or "active"
        _check_status(status, ENSEMBLE_STATUSES, kind)
        row = EnsembleRow(
            name=name,
            definition=copy.deepcopy(definition),
            status=status,
            model_version=model_version,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        other: type[EnsembleRow | ExperimentRow] = ExperimentRow
    elif kind == "experiment":
        if not router or not control:
            raise ValueError("an experiment needs a router and a control")
        if assignment_key is None:
            assignment_key = secrets.token_bytes(ASSIGNMENT_KEY_BYTES)
        if not isinstance(assignment_key, bytes) or len(assignment_key) < 16:
            raise ValueError("an experiment's assignment_key must be at least 16 random bytes")
        status = status or "running"
        _check_status(status, EXPERIMENT_STATUSES, kind)
        row = ExperimentRow(
            name=name,
            router=router,
            definition=copy.deepcopy(definition),
            state=copy.deepcopy(state) if state is not None else {},
            status=status,
            control=control,
            rr_counter=0,
            revision=1,
            builtin=builtin,
            assignment_key=assignment_key,
            created_by=actor,
            created_at=now,
            updated_at=now,
            started_at=now,
        )
        other = EnsembleRow
    else:
        raise ValueError(f"kind is one of {', '.join(KINDS)}, not {kind!r}")
    model = type(row)
    if session.get(model, name, populate_existing=True) is not None:
        session.rollback()
        raise NameTakenError(name)  # the plain case; the INSERT below decides races
    stale = session.identity_map.get(session.identity_key(model, name))
    if stale is not None:  # deleted by another worker since this session loaded it
        session.expunge(stale)
    try:
        _lock_name(session, name)
        session.add(row)
        session.flush()  # INSERT first: the primary key, and on SQLite the write lock, are ours
        if session.scalar(select(other.name).where(other.name == name)) is not None:
            raise NameTakenError(name)
        session.add(
            ExperimentEvent(
                experiment=name, kind="created", actor=actor, at=now, after=_snapshot(row)
            )
        )
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        if _name_exists(session, name):  # another worker created it first
            raise NameTakenError(name) from exc
        raise
    except BaseException:
        session.rollback()
        raise
    log.info("%s %s created by %s", kind, name, actor)
    return row


def list_definitions(session: Session) -> tuple[list[EnsembleRow], list[ExperimentRow]]:
    """Every created ensemble and every experiment, oldest first, freshly read."""
    ensembles = session.scalars(
        select(EnsembleRow)
        .order_by(EnsembleRow.created_at, EnsembleRow.name)
        .execution_options(populate_existing=True)
    )
    experiments = session.scalars(
        select(ExperimentRow)
        .order_by(ExperimentRow.created_at, ExperimentRow.name)
        .execution_options(populate_existing=True)
    )
    return list(ensembles), list(experiments)


def get_ensemble(session: Session, name: str) -> EnsembleRow | None:
    """One created ensemble as the database has it now (never the session's stale copy)."""
    return session.get(EnsembleRow, name, populate_existing=True)


def get_experiment(session: Session, name: str) -> ExperimentRow | None:
    """One experiment as the database has it now (never the session's stale copy)."""
    return session.get(ExperimentRow, name, populate_existing=True)


def update_experiment(
    session: Session,
    name: str,
    *,
    actor: str,
    kind: str,
    reason: str | None = None,
    expected_revision: int | None = None,
    **changes: Any,
) -> ExperimentRow:
    """Apply changes, bump the revision and record one event, all in one transaction."""
    unknown = set(changes) - EXPERIMENT_CHANGES
    if unknown:
        raise TypeError(
            f"update_experiment cannot change {', '.join(sorted(unknown))}; "
            f"it changes {', '.join(sorted(EXPERIMENT_CHANGES))}"
        )
    _check_width("actor", actor)
    _check_width("kind", kind)
    _check_width("control", changes.get("control"))
    if "status" in changes:
        _check_status(changes["status"], EXPERIMENT_STATUSES, "experiment")
    table = ExperimentRow.__table__
    # Write first: the row (Postgres) or the database (SQLite) is locked until we commit, so
    # what we read next is what we change, and two writers cannot both pass the revision check.
    claim = update(table).where(table.c.name == name).values(revision=table.c.revision + 1)
    if expected_revision is not None:
        claim = claim.where(table.c.revision == expected_revision)
    try:
        if not session.execute(claim).rowcount:
            actual = session.scalar(select(table.c.revision).where(table.c.name == name))
            if actual is None:
                raise DefinitionNotFound(name, "experiment")
            assert expected_revision is not None
            raise ConcurrentChangeError(name, expected_revision, actual)
        row = session.get_one(ExperimentRow, name, populate_existing=True)
        now = utcnow()  # taken under the lock: events' times follow the order of the changes
        before = {field: _jsonable(getattr(row, field)) for field in changes}
        for field, value in changes.items():
            setattr(row, field, copy.deepcopy(value))
        row.updated_at = now
        if kind in SHARE_CHANGES:  # SRM counts the units of the new shares from here on
            row.share_epoch = (row.share_epoch or 0) + 1
        session.add(
            ExperimentEvent(
                experiment=name,
                kind=kind,
                actor=actor,
                at=now,
                before=before,
                after={field: _jsonable(value) for field, value in changes.items()},
                reason=reason,
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    log.info("experiment %s: %s by %s (revision %d)", name, kind, actor, row.revision)
    return row


def delete_definition(session: Session, name: str, actor: str) -> bool:
    """Delete an ensemble or experiment (its events and predictions stay); False if none."""
    _check_width("actor", actor)
    try:
        for model in (EnsembleRow, ExperimentRow):
            row = session.get(model, name, populate_existing=True)
            if row is None:
                continue
            snapshot = _snapshot(row)
            table = model.__table__
            if not session.execute(delete(table).where(table.c.name == name)).rowcount:
                break  # another worker deleted it meanwhile
            session.expunge(row)
            session.add(
                ExperimentEvent(experiment=name, kind="deleted", actor=actor, before=snapshot)
            )
            session.commit()
            log.info("%s %s deleted by %s", row.kind, name, actor)
            return True
        session.rollback()
        return False
    except BaseException:
        session.rollback()
        raise


def update_ensemble_status(session: Session, name: str, status: str, actor: str) -> EnsembleRow:
    """Pause or reactivate a created ensemble (e.g. when its model version goes away)."""
    _check_status(status, ENSEMBLE_STATUSES, "ensemble")
    _check_width("actor", actor)
    try:
        row = session.get(EnsembleRow, name, populate_existing=True)
        if row is None:
            raise DefinitionNotFound(name, "ensemble")
        before = row.status
        row.status = status
        row.updated_at = utcnow()
        session.add(
            ExperimentEvent(
                experiment=name,
                kind="paused" if status == "paused" else "resumed",
                actor=actor,
                at=row.updated_at,
                before={"status": before},
                after={"status": status},
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def next_ticket(session: Session, name: str) -> int:
    """The next round-robin ticket (0, 1, 2, ...), unique across every worker and instance."""
    table = ExperimentRow.__table__
    bump = update(table).where(table.c.name == name).values(rr_counter=table.c.rr_counter + 1)
    try:
        if session.get_bind().dialect.update_returning:  # SQLite >= 3.35, Postgres
            counter = session.execute(bump.returning(table.c.rr_counter)).scalar_one_or_none()
        elif session.execute(bump).rowcount:
            # Same transaction: our UPDATE holds the lock, so this reads our own increment.
            counter = session.scalar(select(table.c.rr_counter).where(table.c.name == name))
        else:
            counter = None
        if counter is None:
            raise DefinitionNotFound(name, "experiment")
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return int(counter) - 1


def experiment_events(session: Session, name: str, limit: int = 200) -> list[ExperimentEvent]:
    """An ensemble's or experiment's history, newest first (kept after it is deleted)."""
    query = (
        select(ExperimentEvent)
        .where(ExperimentEvent.experiment == name)
        # The id, not the clock: it follows the order in which the changes took the row's lock.
        .order_by(ExperimentEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def ensure_builtin_experiment(
    session: Session,
    name: str,
    definition: dict[str, Any],
    router: str,
    state: dict[str, Any],
    control: str,
    actor: str = "system",
    assignment_key: bytes | None = None,
) -> ExperimentRow:
    """Create a built-in experiment (e.g. ``ab``) unless it exists; an existing one is kept
    (with its key: a restart never reassigns clients)."""
    existing = get_experiment(session, name)
    if existing is not None:
        return existing
    try:
        row = create_definition(
            session,
            kind="experiment",
            name=name,
            definition=definition,
            actor=actor,
            router=router,
            state=state,
            control=control,
            builtin=True,
            assignment_key=assignment_key,
        )
    except NameTakenError:
        existing = get_experiment(session, name)  # another worker created it a moment ago
        if existing is None:
            raise  # an ensemble holds the name
        return existing
    assert isinstance(row, ExperimentRow)
    return row
