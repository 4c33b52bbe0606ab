"""``/admin/predictions``: every served prediction, newest first, filtered and paged; and the
same list as a CSV download.

The filters come from the query string and are checked strictly: a strategy or arm must be one
the service knows or the store has on record, the outcome one of ``store.browse.OUTCOMES``, a
page cursor one the page itself made; anything else answers 400 saying what is accepted. The
CSV export streams at most ``EXPORT_LIMIT`` rows and neutralises cells a spreadsheet would run
as a formula (OWASP's CSV injection advice).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Response, abort, render_template, request, url_for
from flask.typing import ResponseReturnValue

import store
from serving.errors import ServingError
from store.browse import EXPORT_LIMIT, OUTCOMES, PAGE_SIZE
from views.admin import bp
from views.auth import admin_required
from views.context import services

#: The query parameters the list and the export take.
PARAMETERS = ("strategy", "arm", "outcome", "before", "after")
#: Leading characters that make a spreadsheet evaluate a cell (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The CSV's columns, in order.
CSV_HEADER = (
    "prediction_id",
    "created_at",
    "strategy",
    "experiment",
    "arm",
    "label",
    "confidence",
    "abstained",
    "outcome",
    "true_class",
    "latency_ms",
    "fallback_model",
    "model_version",
    "error",
)
#: CSV rows written to the response at a time.
CSV_CHUNK = 500


class BadQuery(ValueError):
    """A query parameter the list does not accept; the message says what it accepts."""


@dataclass(frozen=True)
class Query:
    """A validated request: the filters, the page cursor, and the names the filters offer."""

    filters: store.PredictionFilter
    before: store.Cursor | None
    after: store.Cursor | None
    strategies: list[str]
    arms: list[str]

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for the page links and the export link)."""
        f = self.filters
        values = {"strategy": f.strategy, "arm": f.arm, "outcome": f.outcome}
        return {k: v for k, v in values.items() if v is not None}


def _choices() -> tuple[list[str], list[str]]:
    """Strategies and arms the filters accept: the service's names plus every stored one, so
    traffic of a deleted ensemble stays reachable."""
    svc = services()
    strategies, arms = store.stored_names(svc.db.sessions())
    known_arms: list[str] = []
    try:
        known_arms = svc.definitions.known_models()
    except ServingError:  # no model bundle loaded: the stored names are all there is
        pass
    return sorted(set(svc.catalogue().names) | set(strategies)), sorted(set(arms) | set(known_arms))


def _one(args: Mapping[str, list[str]], name: str) -> str | None:
    """The parameter's single value; None when absent or empty (the form's "any")."""
    values = args.get(name, [])
    if len(values) > 1:
        raise BadQuery(f"Give {name} once; it was given {len(values)} times.")
    value = values[0].strip() if values else ""
    return value or None


def _named(value: str | None, name: str, allowed: Iterable[str]) -> str | None:
    allowed = list(allowed)
    if value is None or value in allowed:
        return value
    raise BadQuery(
        f"There is no {name} {value[:64]!r}. Choose one of: {', '.join(allowed) or 'none yet'}."
    )


def _cursor(value: str | None, name: str) -> store.Cursor | None:
    if value is None:
        return None
    try:
        return store.Cursor.parse(value)
    except ValueError:
        raise BadQuery(
            f"{name}={value[:80]!r} is not a page of this list; use its Newer and Older links."
        ) from None


def parse_query(args: Mapping[str, list[str]], strategies: list[str], arms: list[str]) -> Query:
    """The request's filters and cursor, or ``BadQuery`` naming what was wrong."""
    unknown = sorted(set(args) - set(PARAMETERS))
    if unknown:
        raise BadQuery(
            f"Unknown parameter {unknown[0][:40]!r}; this list takes {', '.join(PARAMETERS)}."
        )
    outcome = _one(args, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadQuery(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome[:40]!r}.")
    before, after = _cursor(_one(args, "before"), "before"), _cursor(_one(args, "after"), "after")
    if before is not None and after is not None:
        raise BadQuery("Give before or after, not both.")
    filters = store.PredictionFilter(
        strategy=_named(_one(args, "strategy"), "strategy", strategies),
        arm=_named(_one(args, "arm"), "arm", arms),
        outcome=outcome,
    )
    return Query(filters, before, after, strategies, arms)


def _query() -> tuple[Query, str | None]:
    """This request's query; or the unfiltered one and why the request's was refused."""
    strategies, arms = _choices()
    args = {key: request.args.getlist(key) for key in request.args}
    try:
        return parse_query(args, strategies, arms), None
    except BadQuery as exc:
        return Query(store.PredictionFilter(), None, None, strategies, arms), str(exc)


@bp.get("/predictions")
@admin_required
def predictions() -> ResponseReturnValue:
    """Served predictions, newest first, PAGE_SIZE a page; 400 with the form on a bad filter."""
    query, error = _query()
    if error is not None:
        return _render(query, None, error), 400
    page = store.list_predictions(
        services().db.sessions(), query.filters, before=query.before, after=query.after
    )
    return _render(query, page, None)


def _render(query: Query, page: store.PredictionPage | None, error: str | None) -> str:
    params = query.params()

    def link(**cursor: store.Cursor | None) -> str | None:
        """The list's URL with the filters and one page cursor; None without a cursor."""
        ((name, at),) = cursor.items()
        return None if at is None else url_for("admin.predictions", **params, **{name: at.token()})

    return render_template(
        "admin/predictions.html",
        query=query,
        page=page,
        error=error,
        outcomes=OUTCOMES,
        page_size=PAGE_SIZE,
        export_limit=EXPORT_LIMIT,
        paged=query.before is not None or query.after is not None,
        newest_url=url_for("admin.predictions", **params),
        newer_url=link(after=page.newer) if page else None,
        older_url=link(before=page.older) if page else None,
        export_url=url_for("admin.predictions_csv", **params),
    )


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a leading ``'``."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_row(row: store.ListedPrediction) -> list[str]:
    """One prediction as CSV cells, in ``CSV_HEADER``'s order."""
    cells: list[object] = [
        row.id,
        row.created_at.astimezone(UTC).isoformat(),
        row.strategy,
        row.experiment,
        row.arm,
        row.label,
        None if row.confidence is None else f"{row.confidence:.6f}",
        "true" if row.abstained else "false",
        row.outcome,
        row.true_label,
        f"{row.latency_ms:.3f}",
        row.fallback_model,
        row.model_version,
        row.error,
    ]
    return [csv_cell(cell) for cell in cells]


def csv_lines(rows: Iterable[store.ListedPrediction]) -> Iterator[str]:
    """The header, then the rows, written CSV_CHUNK rows to a piece of text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    for count, row in enumerate(rows, start=1):
        writer.writerow(csv_row(row))
        if count % CSV_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@bp.get("/predictions.csv")
@admin_required
def predictions_csv() -> ResponseReturnValue:
    """The filtered list as a CSV download (the newest EXPORT_LIMIT rows), streamed."""
    query, error = _query()
    if error is not None:
        abort(400, description=error)
    if query.before is not None or query.after is not None:
        abort(400, description="The export takes strategy, arm and outcome, not a page cursor.")
    db = services().db

    def generate() -> Iterator[str]:
        # Its own session: the response streams after the request's session is gone.
        with db.session() as session:
            yield from csv_lines(store.export_predictions(session, query.filters, EXPORT_LIMIT))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        generate(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="chorus-predictions-{stamp}.csv"',
            "X-Export-Limit": str(EXPORT_LIMIT),
        },
    )
