"""The tables: predictions, their feedback (effective verdicts and every submission), and the
ensembles, experiments and events as data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: An ensemble's statuses: a paused one answers no traffic (e.g. its model version went away).
ENSEMBLE_STATUSES = ("active", "paused")
#: An experiment's statuses (DESIGN.md "Experiment lifecycle").
EXPERIMENT_STATUSES = ("running", "paused", "completed", "rolled_back")
#: Who gave a verdict: the client holding the prediction id, or an authenticated admin.
FEEDBACK_SOURCES = ("client", "admin")


def utcnow() -> datetime:
    """Aware UTC now: every timestamp in the database is UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random uuid4 hex: unguessable, so a prediction id can be handed to any client."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Store UTC and read back aware UTC: SQLite keeps no time zone, so both backends agree."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON whose Python None is SQL NULL (not the JSON text ``null``), so ``IS NULL`` finds it.
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    """Declarative base holding the metadata the migrations build (store/migrations/)."""


#: The rows latency percentiles are taken over: successful, served (not shadow runs).
SERVED_OK = "error IS NULL AND shadow_of IS NULL"
#: The first release's successful ab rows (no experiment column then): a fixed, small set.
LEGACY_AB_OK = f"experiment IS NULL AND strategy = 'ab' AND {SERVED_OK}"


class Prediction(Base):
    """One prediction request (or shadow run): what was asked, which arm served, what it said."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_strategy_arm", "strategy", "arm"),
        # The admin's list of predictions (``store.browse``), filtered by requested strategy or
        # by serving arm, newest first: a page is a short range of one of these (migration 0009).
        Index("ix_predictions_strategy_created_at", "strategy", "created_at", "id"),
        Index("ix_predictions_arm_created_at", "arm", "created_at", "id"),
        # Also the index for ``experiment`` alone (its leading column): results read by it.
        Index("ix_predictions_experiment_arm_created_at", "experiment", "arm", "created_at"),
        # The bounded latency windows behind p50/p95, read from the index alone (successful
        # served rows only; the filtered columns are in it, always NULL, so no row is read):
        # per requested strategy, per experiment arm, and the first release's ab rows.
        Index(
            "ix_predictions_strategy_latency",
            "strategy",
            "created_at",
            "latency_ms",
            "error",
            "shadow_of",
            sqlite_where=text(SERVED_OK),
            postgresql_where=text(SERVED_OK),
        ),
        Index(
            "ix_predictions_arm_latency",
            "experiment",
            "arm",
            "created_at",
            "latency_ms",
            "error",
            "shadow_of",
            sqlite_where=text(SERVED_OK),
            postgresql_where=text(SERVED_OK),
        ),
        Index(
            "ix_predictions_legacy_ab_latency",
            "arm",
            "created_at",
            "latency_ms",
            "experiment",
            "strategy",
            "error",
            "shadow_of",
            sqlite_where=text(LEGACY_AB_OK),
            postgresql_where=text(LEGACY_AB_OK),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    #: The strategy the client asked for: a built-in or created ensemble or experiment name.
    strategy: Mapped[str] = mapped_column(String(64))
    #: The ensemble or member that served (for an experiment: the routed arm, for a shadow run:
    #: the shadow model; otherwise equal to ``strategy``).
    arm: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(64))
    class_index: Mapped[int | None]
    confidence: Mapped[float | None]
    #: ``{class name: probability}`` in class order.
    probabilities: Mapped[dict[str, float] | None] = mapped_column(NullableJSON)
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    fallback: Mapped[dict[str, str] | None] = mapped_column(NullableJSON)
    degraded: Mapped[list[str]] = mapped_column(JSON, default=list)
    latency_ms: Mapped[float]
    model_version: Mapped[str] = mapped_column(String(64))
    client_hash: Mapped[str | None] = mapped_column(String(64))
    image_sha256: Mapped[str] = mapped_column(String(64))
    #: Set when the ensemble failed (e.g. every member failed); the answer columns are then NULL.
    error: Mapped[str | None] = mapped_column(Text)
    #: The experiment that routed the request; NULL for direct ensemble traffic.
    experiment: Mapped[str | None] = mapped_column(String(64))
    #: How many members a cascade queried before it stopped.
    members_used: Mapped[int | None]
    #: On a shadow run's row: the served prediction it shadowed (deleted with it).
    shadow_of: Mapped[str | None] = mapped_column(
        String(32),
        ForeignKey("predictions.id", ondelete="CASCADE", name="fk_predictions_shadow_of"),
        index=True,
    )
    #: Why the router chose the arm (e.g. ``sticky``, ``rule``, ``explore``, ``promoted``).
    route_reason: Mapped[str | None] = mapped_column(String(32))
    #: The request features (width, height, format, ... and the client's), for drift monitoring.
    features: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    #: The 28x28 uint8 image the model saw (784 bytes, row-major), for the result page; the
    #: upload itself is never stored.
    canvas: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The answer said "not sure: this may not be a clothing item" (its label is still given).
    abstained: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The abstention combiner's score in [0, 1]; NULL when none was fitted or it was not run.
    uncertainty: Mapped[float | None]

    feedback: Mapped[Feedback | None] = relationship(
        back_populates="prediction", uselist=False, lazy="raise"
    )


class Feedback(Base):
    """The effective verdict on a prediction, the one statistics read: unique per prediction.

    It is the first client verdict that counted, or the latest admin correction; every
    submission, counted or not, is kept in ``feedback_events`` (``FeedbackEvent``).
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), unique=True
    )
    true_class_index: Mapped[int]
    correct: Mapped[bool]
    #: When the effective verdict was given (the first client verdict, or the correction).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    prediction: Mapped[Prediction] = relationship(back_populates="feedback", lazy="raise")


class FeedbackEvent(Base):
    """One verdict as submitted, with its time: the history that a flipped verdict cannot erase."""

    __tablename__ = "feedback_events"
    __table_args__ = (
        # What the per-client cap counts: a unit's counted verdicts within one experiment.
        Index("ix_feedback_events_scope_client_hash", "scope", "client_hash"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[str] = mapped_column(
        String(32),
        ForeignKey("predictions.id", ondelete="CASCADE", name="fk_feedback_events_prediction_id"),
        index=True,
    )
    true_class_index: Mapped[int]
    #: Whether the prediction's answer was the submitted class.
    correct: Mapped[bool]
    #: ``client`` (anyone holding the prediction id) or ``admin`` (a correction).
    source: Mapped[str] = mapped_column(String(8))
    #: The admin's user name for a correction; NULL for client verdicts.
    actor: Mapped[str | None] = mapped_column(String(64))
    #: The prediction's client (its randomisation unit), whose contribution the cap limits.
    client_hash: Mapped[str | None] = mapped_column(String(64))
    #: The statistics the verdict feeds: the prediction's experiment, else its strategy.
    scope: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Whether this submission set the effective verdict when it arrived (false: a later client
    #: verdict, or one over the per-client cap).
    counted: Mapped[bool] = mapped_column(Boolean)
    #: Why it did or did not count, or the admin's reason for a correction.
    note: Mapped[str | None] = mapped_column(Text)


class EnsembleRow(Base):
    """A created ensemble: its normalised create body, so every worker builds the same one."""

    __tablename__ = "ensembles"
    kind: ClassVar[str] = "ensemble"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    #: The model version it was built against (its members must exist there).
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ExperimentRow(Base):
    """An experiment as data: definition, live state and outcome, shared by every worker."""

    __tablename__ = "experiments"
    kind: ClassVar[str] = "experiment"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    router: Mapped[str] = mapped_column(String(32))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: What changes while it runs, e.g. ``{"weights": {...}, "segments": {arm: [[lo, hi]]}}``.
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running", server_default="running")
    control: Mapped[str] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    #: The results frozen at the decision.
    report: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    #: Round-robin's cluster-wide counter (see ``next_ticket``).
    rr_counter: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: Bumped on every change, so a worker's cache and a PATCH can tell they are stale.
    revision: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    #: Bumped by every change of the configured shares: SRM counts the units of this epoch.
    share_epoch: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    builtin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The secret HMAC key of sticky assignment (``experiments.assignment``): random, made at
    #: creation, never changed, and never part of any answer, event, report, log or page.
    assignment_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ExperimentEvent(Base):
    """One change to an ensemble or experiment, kept after it is deleted (no foreign key)."""

    __tablename__ = "experiment_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The ensemble's or experiment's name.
    experiment: Mapped[str] = mapped_column(String(64), index=True)
    #: created, weights_changed, canary_changed, paused, resumed, promoted, rolled_back, ...
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    before: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    reason: Mapped[str | None] = mapped_column(Text)


class AuthFailure(Base):
    """One failed admin sign-in, by client address: the shared count every worker limits by."""

    __tablename__ = "auth_failures"
    __table_args__ = (Index("ix_auth_failures_client_at", "client", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The client's address (behind the proxy: the one it forwarded).
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class ModelActivation(Base):
    """One activation of a model version: the newest row is the version every worker serves."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    #: The version served before (None: the first activation recorded).
    previous: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Created ensembles and experiments paused because the version lacks models they name.
    paused: Mapped[list[str] | None] = mapped_column(NullableJSON)


class IdempotentAnswer(Base):
    """The first answer to a predict request that carried an ``Idempotency-Key``, per client."""

    __tablename__ = "idempotent_answers"

    #: Who sent it (sha256 of the client id, else of the address) and the key it chose.
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: sha256 of what was asked (image, strategy, features): the same key with another request
    #: is refused rather than answered with the first request's result.
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: The answer's JSON body; NULL while the first request is still being served.
    body: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


def _key(name: str) -> Column[str]:
    return Column(name, String(64), primary_key=True)


def _counters(*names: str) -> list[Column[Any]]:
    """Counter columns of a roll-up, 0 when a row is made (``confidence_sum`` is a float)."""
    return [
        Column(
            name,
            Float() if name.endswith("confidence_sum") else BigInteger(),
            nullable=False,
            server_default=text("0"),
        )
        for name in names
    ]


#: Request counts of one slice of served traffic (``store.rollups``).
COUNT_FIELDS = (
    "requests",
    "served",
    "errors",
    "fallbacks",
    "confidences",
    "confidence_sum",
    "labelled",
    "correct",
)
#: Per requested strategy only: answered predictions that abstained (``/admin``'s counts).
STRATEGY_FIELDS = ("abstained",)
#: Unit-level sums beside them: units with a served request, and the ratio statistics' sums
#: of squares and products (``n`` labelled units; ``m_sum``/``d_sum`` are correct/labelled).
UNIT_SUM_FIELDS = ("units", "n", "m_sum_squares", "d_sum_squares", "m_d_sum_of_products")
#: The two slices of an experiment's traffic kept: all of it, and what its router routed.
ROLLUP_SCOPES = ("all", "routed")
#: A client's counts within one experiment arm (per scope).
UNIT_FIELDS = ("served", "d", "m")


def _scoped(fields: tuple[str, ...]) -> list[str]:
    return [f"{scope}_{field}" for scope in ROLLUP_SCOPES for field in fields]


#: Per (experiment, arm, client): served, labelled (d) and correct (m) counts per scope.
rollup_units = Table(
    "rollup_units",
    Base.metadata,
    _key("experiment"),
    _key("arm"),
    _key("unit"),
    *_counters(*_scoped(UNIT_FIELDS)),
)
#: Per (experiment, arm): request counts and unit-level sums per scope.
rollup_arms = Table(
    "rollup_arms",
    Base.metadata,
    _key("experiment"),
    _key("arm"),
    *_counters(*_scoped(COUNT_FIELDS + UNIT_SUM_FIELDS)),
)
#: Per requested strategy: request counts over all served traffic (the stats page).
rollup_strategies = Table(
    "rollup_strategies",
    Base.metadata,
    _key("strategy"),
    *_counters(*COUNT_FIELDS, *STRATEGY_FIELDS),
)
#: The clients with a served routed request in a share epoch (what SRM counts).
rollup_epoch_units = Table(
    "rollup_epoch_units",
    Base.metadata,
    _key("experiment"),
    Column("epoch", BigInteger(), primary_key=True),
    _key("arm"),
    _key("unit"),
)
#: Per (experiment, epoch, arm): routed requests, served ones, anonymous served, distinct clients.
rollup_epoch_arms = Table(
    "rollup_epoch_arms",
    Base.metadata,
    _key("experiment"),
    Column("epoch", BigInteger(), primary_key=True),
    _key("arm"),
    *_counters("requests", "served", "anonymous", "clients"),
)
#: Per (experiment, shadow model): runs, errors, agreement with the served answer, accuracy.
rollup_shadows = Table(
    "rollup_shadows",
    Base.metadata,
    _key("experiment"),
    _key("arm"),
    *_counters("runs", "errors", "agreement", "labelled", "correct"),
)
#: Each arm's all-traffic sums when the experiment's labels reached ``labelled``: the series.
rollup_checkpoints = Table(
    "rollup_checkpoints",
    Base.metadata,
    _key("experiment"),
    Column("labelled", BigInteger(), primary_key=True),
    _key("arm"),
    *_counters("all_labelled", "all_correct", *(f"all_{f}" for f in UNIT_SUM_FIELDS[1:])),
)
