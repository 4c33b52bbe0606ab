"""Roll-ups kept up to date on write, so results and stats cost the same at any history size.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Creates the roll-up tables ``store.rollups`` maintains (per strategy; per experiment arm and
scope; per client unit; per share epoch; per shadow model; series checkpoints), the
covering partial indexes behind the bounded latency windows (per strategy, per arm), and
``experiments.share_epoch``; then fills them from the existing rows with INSERT ... SELECT ...
GROUP BY, so a first-release or a 0006 database upgrades with the numbers the rows give. The
series checkpoints are replayed from the labelled rows in time order (the one pass over rows,
done once here). The definitions are written out here, not imported: a migration must not
change when the code does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = (
    "requests",
    "served",
    "errors",
    "fallbacks",
    "confidences",
    "confidence_sum",
    "labelled",
    "correct",
)
UNIT_SUMS = ("units", "n", "m_sum_squares", "d_sum_squares", "m_d_sum_of_products")
SCOPES = ("all", "routed")
UNIT_FIELDS = ("served", "d", "m")
FIXED_ROUTES = ("paused", "completed", "rolled_back")
SHARE_CHANGES = ("weights_changed", "canary_changed", "canary_stepped")
CHECKPOINT_LABELS = 100
DENSE_LABELS = 50
#: Covering partial indexes of the bounded latency windows (successful served rows only).
SERVED_OK = "error IS NULL AND shadow_of IS NULL"
LEGACY_AB_OK = f"experiment IS NULL AND strategy = 'ab' AND {SERVED_OK}"
#: name: (columns, WHERE); the filtered columns are in the index so no row is read.
LATENCY_INDEXES = {
    "ix_predictions_strategy_latency": (
        ["strategy", "created_at", "latency_ms", "error", "shadow_of"],
        SERVED_OK,
    ),
    "ix_predictions_arm_latency": (
        ["experiment", "arm", "created_at", "latency_ms", "error", "shadow_of"],
        SERVED_OK,
    ),
    "ix_predictions_legacy_ab_latency": (
        ["arm", "created_at", "latency_ms", "experiment", "strategy", "error", "shadow_of"],
        LEGACY_AB_OK,
    ),
}


def _key(name: str) -> sa.Column:
    return sa.Column(name, sa.String(64), primary_key=True)


def _counters(*names: str) -> list[sa.Column]:
    return [
        sa.Column(
            name,
            sa.Float() if name.endswith("confidence_sum") else sa.BigInteger(),
            nullable=False,
            server_default=sa.text("0"),
        )
        for name in names
    ]


def _scoped(fields: Sequence[str]) -> list[str]:
    return [f"{scope}_{field}" for scope in SCOPES for field in fields]


def _create_tables() -> None:
    op.create_table(
        "rollup_units",
        _key("experiment"),
        _key("arm"),
        _key("unit"),
        *_counters(*_scoped(UNIT_FIELDS)),
    )
    op.create_table(
        "rollup_arms", _key("experiment"), _key("arm"), *_counters(*_scoped(COUNTS + UNIT_SUMS))
    )
    op.create_table("rollup_strategies", _key("strategy"), *_counters(*COUNTS))
    op.create_table(
        "rollup_epoch_units",
        _key("experiment"),
        sa.Column("epoch", sa.BigInteger(), primary_key=True),
        _key("arm"),
        _key("unit"),
    )
    op.create_table(
        "rollup_epoch_arms",
        _key("experiment"),
        sa.Column("epoch", sa.BigInteger(), primary_key=True),
        _key("arm"),
        *_counters("requests", "served", "anonymous", "clients"),
    )
    op.create_table(
        "rollup_shadows",
        _key("experiment"),
        _key("arm"),
        *_counters("runs", "errors", "agreement", "labelled", "correct"),
    )
    op.create_table(
        "rollup_checkpoints",
        _key("experiment"),
        sa.Column("labelled", sa.BigInteger(), primary_key=True),
        _key("arm"),
        *_counters("all_labelled", "all_correct", *(f"all_{f}" for f in UNIT_SUMS[1:])),
    )


predictions = sa.table(
    "predictions",
    *(
        sa.column(name)
        for name in (
            "id",
            "created_at",
            "strategy",
            "arm",
            "class_index",
            "confidence",
            "fallback",
            "client_hash",
            "error",
            "experiment",
            "shadow_of",
            "route_reason",
        )
    ),
)
feedback_correct = sa.column("correct", sa.Boolean)
feedback = sa.table(
    "feedback", sa.column("prediction_id"), sa.column("true_class_index"), feedback_correct
)
events = sa.table("experiment_events", sa.column("experiment"), sa.column("kind"), sa.column("at"))
experiments = sa.table("experiments", sa.column("name"), sa.column("share_epoch"))

p, f = predictions.c, feedback.c
OK = p.error.is_(None)
LABELLED = OK & f.prediction_id.is_not(None)
CORRECT = LABELLED & (f.correct == sa.true())
ROUTED = sa.or_(p.route_reason.is_(None), p.route_reason.not_in(FIXED_ROUTES))
EXPERIMENT = sa.func.coalesce(p.experiment, sa.case((p.strategy == "ab", sa.literal("ab"))))


def _sum_if(condition: sa.ColumnElement[bool], value: object = 1) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, value), else_=0)), 0)


def _counts(scope: sa.ColumnElement[bool]) -> list[sa.ColumnElement]:
    """COUNTS over the rows in ``scope``, in COUNTS' order."""
    confident = scope & OK & p.confidence.is_not(None)
    return [
        _sum_if(scope),
        _sum_if(scope & OK),
        _sum_if(scope & p.error.is_not(None)),
        _sum_if(scope & OK & p.fallback.is_not(None)),
        _sum_if(confident),
        sa.func.coalesce(sa.func.sum(sa.case((confident, p.confidence))), 0.0),
        _sum_if(scope & LABELLED),
        _sum_if(scope & CORRECT),
    ]


def _served_rows(select: sa.Select) -> sa.Select:
    return select.select_from(predictions.outerjoin(feedback, f.prediction_id == p.id)).where(
        p.shadow_of.is_(None)
    )


def _fill_strategies() -> None:
    rows = _served_rows(sa.select(p.strategy, *_counts(sa.true()))).group_by(p.strategy)
    op.execute(
        sa.table("rollup_strategies", *(sa.column(c) for c in ("strategy", *COUNTS)))
        .insert()
        .from_select(["strategy", *COUNTS], rows)
    )


def _scope(scope: str) -> sa.ColumnElement[bool]:
    return sa.true() if scope == "all" else ROUTED


def _fill_units() -> None:
    columns = []
    for scope in SCOPES:
        inside = _scope(scope)
        columns += [_sum_if(inside & OK), _sum_if(inside & LABELLED), _sum_if(inside & CORRECT)]
    rows = (
        _served_rows(sa.select(EXPERIMENT, p.arm, p.client_hash, *columns))
        .where(EXPERIMENT.is_not(None), p.client_hash.is_not(None))
        .group_by(EXPERIMENT, p.arm, p.client_hash)
    )
    names = ["experiment", "arm", "unit", *_scoped(UNIT_FIELDS)]
    op.execute(
        sa.table("rollup_units", *(sa.column(c) for c in names)).insert().from_select(names, rows)
    )


def _fill_arms() -> None:
    """Request counts and anonymous units from the rows, client units from rollup_units."""
    anonymous = p.client_hash.is_(None)
    columns = []
    for scope in SCOPES:
        inside = _scope(scope)
        counted = _counts(inside)
        columns += [c.label(f"{scope}_{name}") for c, name in zip(counted, COUNTS, strict=True)]
        columns += [
            _sum_if(inside & OK & anonymous).label(f"{scope}_anonymous_units"),
            _sum_if(inside & LABELLED & anonymous).label(f"{scope}_anonymous_n"),
            _sum_if(inside & CORRECT & anonymous).label(f"{scope}_anonymous_m"),
        ]
    requests = (
        _served_rows(sa.select(EXPERIMENT.label("experiment"), p.arm.label("arm"), *columns))
        .where(EXPERIMENT.is_not(None))
        .group_by(EXPERIMENT, p.arm)
        .subquery()
    )
    units = sa.table(
        "rollup_units",
        sa.column("experiment"),
        sa.column("arm"),
        *map(sa.column, _scoped(UNIT_FIELDS)),
    )
    u = units.c
    sums = []
    for scope in SCOPES:
        served, d, m = (u[f"{scope}_{name}"] for name in UNIT_FIELDS)
        sums += [
            _sum_if(served > 0).label(f"{scope}_units"),
            _sum_if(d > 0).label(f"{scope}_n"),
            sa.func.coalesce(sa.func.sum(m * m), 0).label(f"{scope}_m_sum_squares"),
            sa.func.coalesce(sa.func.sum(d * d), 0).label(f"{scope}_d_sum_squares"),
            sa.func.coalesce(sa.func.sum(m * d), 0).label(f"{scope}_m_d_sum_of_products"),
        ]
    clients = (
        sa.select(u.experiment.label("experiment"), u.arm.label("arm"), *sums)
        .group_by(u.experiment, u.arm)
        .subquery()
    )
    r, c = requests.c, clients.c
    anonymous_part = {"units": "units", "n": "n", "m_sum_squares": "m", "d_sum_squares": "n"}
    anonymous_part["m_d_sum_of_products"] = "m"
    values = [r.experiment, r.arm]
    names = ["experiment", "arm"]
    for scope in SCOPES:
        values += [r[f"{scope}_{name}"] for name in COUNTS]
        names += [f"{scope}_{name}" for name in COUNTS]
        for name in UNIT_SUMS:
            values.append(
                r[f"{scope}_anonymous_{anonymous_part[name]}"]
                + sa.func.coalesce(c[f"{scope}_{name}"], 0)
            )
            names.append(f"{scope}_{name}")
    rows = sa.select(*values).select_from(
        requests.outerjoin(clients, (c.experiment == r.experiment) & (c.arm == r.arm))
    )
    op.execute(
        sa.table("rollup_arms", *(sa.column(n) for n in names)).insert().from_select(names, rows)
    )


def _fill_epochs() -> None:
    """The units routed since each experiment's last share change: its current epoch."""
    changed = (
        sa.select(events.c.experiment.label("experiment"), sa.func.max(events.c.at).label("at"))
        .where(events.c.kind.in_(SHARE_CHANGES))
        .group_by(events.c.experiment)
        .subquery()
    )
    epoch = sa.func.coalesce(experiments.c.share_epoch, 0)
    source = predictions.outerjoin(changed, changed.c.experiment == EXPERIMENT).outerjoin(
        experiments, experiments.c.name == EXPERIMENT
    )
    since = sa.or_(changed.c.at.is_(None), p.created_at >= changed.c.at)
    where = [EXPERIMENT.is_not(None), p.shadow_of.is_(None), ROUTED, since]
    units = (
        sa.select(EXPERIMENT, epoch, p.arm, p.client_hash)
        .select_from(source)
        .where(*where, OK, p.client_hash.is_not(None))
        .distinct()
    )
    op.execute(
        sa.table("rollup_epoch_units", *map(sa.column, ("experiment", "epoch", "arm", "unit")))
        .insert()
        .from_select(["experiment", "epoch", "arm", "unit"], units)
    )
    arms = (
        sa.select(
            EXPERIMENT,
            epoch,
            p.arm,
            sa.func.count(),
            _sum_if(OK),
            _sum_if(OK & p.client_hash.is_(None)),
            sa.func.count(sa.distinct(sa.case((OK, p.client_hash)))),
        )
        .select_from(source)
        .where(*where)
        .group_by(EXPERIMENT, epoch, p.arm)
    )
    names = ["experiment", "epoch", "arm", "requests", "served", "anonymous", "clients"]
    op.execute(
        sa.table("rollup_epoch_arms", *map(sa.column, names)).insert().from_select(names, arms)
    )


def _fill_shadows() -> None:
    shadow = predictions.alias("shadow")
    served = predictions.alias("served")
    s, v = shadow.c, served.c
    ok = s.error.is_(None)
    labelled = ok & f.prediction_id.is_not(None)
    rows = (
        sa.select(
            v.experiment,
            s.arm,
            sa.func.count(),
            _sum_if(s.error.is_not(None)),
            _sum_if(ok & (s.class_index == v.class_index)),
            _sum_if(labelled),
            _sum_if(labelled & (s.class_index == f.true_class_index)),
        )
        .select_from(
            shadow.join(served, s.shadow_of == v.id).outerjoin(feedback, f.prediction_id == v.id)
        )
        .where(v.experiment.is_not(None))
        .group_by(v.experiment, s.arm)
    )
    names = ["experiment", "arm", "runs", "errors", "agreement", "labelled", "correct"]
    op.execute(sa.table("rollup_shadows", *map(sa.column, names)).insert().from_select(names, rows))


def _replay_checkpoints() -> None:
    """Each experiment's labelled rows in time order, its arms' sums every CHECKPOINT_LABELS."""
    connection = op.get_bind()
    rows = connection.execute(
        _served_rows(sa.select(EXPERIMENT, p.arm, p.client_hash, p.id, CORRECT))
        .where(EXPERIMENT.is_not(None), LABELLED)
        .order_by(EXPERIMENT, p.created_at, p.id)
    )
    names = [
        "experiment",
        "labelled",
        "arm",
        "all_labelled",
        "all_correct",
        *(f"all_{f}" for f in UNIT_SUMS[1:]),
    ]
    table = sa.table("rollup_checkpoints", *map(sa.column, names))
    current, total = None, 0
    units: dict[tuple[str, str], list[int]] = {}
    arms: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    out: list[dict[str, object]] = []
    for experiment, arm, client, prediction_id, correct in rows:
        if experiment != current:
            current, total, units, arms = experiment, 0, {}, defaultdict(lambda: [0] * 6)
        d0, m0 = units.get((arm, client or prediction_id), (0, 0))
        d1, m1 = d0 + 1, m0 + int(bool(correct))
        units[(arm, client or prediction_id)] = (d1, m1)
        sums = arms[arm]
        for i, change in enumerate(
            (1, m1 - m0, int(d0 == 0), m1 * m1 - m0 * m0, d1 * d1 - d0 * d0, m1 * d1 - m0 * d0)
        ):
            sums[i] += change
        total += 1
        if total <= DENSE_LABELS or total % CHECKPOINT_LABELS == 0:
            out += [
                dict(zip(names, (experiment, total, a, *v), strict=True)) for a, v in arms.items()
            ]
        if len(out) >= 10_000:
            connection.execute(table.insert(), out)
            out = []
    if out:
        connection.execute(table.insert(), out)


def upgrade() -> None:
    """Create the roll-ups and fill them from the rows; add the share epoch and the index."""
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(
            sa.Column("share_epoch", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.execute(
        experiments.update().values(
            share_epoch=sa.select(sa.func.count())
            .where(events.c.experiment == experiments.c.name, events.c.kind.in_(SHARE_CHANGES))
            .scalar_subquery()
        )
    )
    for name, (columns, where) in LATENCY_INDEXES.items():
        op.create_index(
            name,
            "predictions",
            columns,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )
    _create_tables()
    _fill_strategies()
    _fill_units()
    _fill_arms()
    _fill_epochs()
    _fill_shadows()
    _replay_checkpoints()


def downgrade() -> None:
    """Back to 0006: the roll-ups, the index and the share epoch go (the rows stay)."""
    for table in (
        "rollup_checkpoints",
        "rollup_shadows",
        "rollup_epoch_arms",
        "rollup_epoch_units",
        "rollup_strategies",
        "rollup_arms",
        "rollup_units",
    ):
        op.drop_table(table)
    for name in LATENCY_INDEXES:
        op.drop_index(name, table_name="predictions")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("share_epoch")
