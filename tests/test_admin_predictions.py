"""``/admin/predictions`` and its CSV export: filters, keyset pages, strict parameters, auth;
and the store's queries behind them (``store.browse``) on SQLite and on PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

import store
from models.data import FASHION_MNIST_CLASSES
from store.browse import PAGE_SIZE, Cursor, PredictionFilter
from store.bulk import add_predictions
from tests import test_browser, test_store_units

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PROBABILITIES = {name: 0.1 for name in FASHION_MNIST_CLASSES}
BAG, DRESS = FASHION_MNIST_CLASSES.index("Bag"), FASHION_MNIST_CLASSES.index("Dress")
URL, CSV_URL = "/admin/predictions", "/admin/predictions.csv"
ID_LINK = re.compile(r'href="/predictions/([0-9a-f]{32})"')
#: The real browser's fixtures (Debian's chromium through Playwright), for the phone test.
browser, live_server, open_session = (
    test_browser.browser,
    test_browser.live_server,
    test_browser.open_session,
)


def _row(seconds: float, strategy: str = "bagging", arm: str | None = None, **fields: Any):
    """A served ``Bag`` answer at T0 + seconds, as the recorder writes one."""
    row: dict[str, Any] = {
        "created_at": T0 + timedelta(seconds=seconds),
        "strategy": strategy,
        "arm": arm or strategy,
        "experiment": "ab" if strategy == "ab" else None,
        "label": "Bag",
        "class_index": BAG,
        "confidence": 0.9,
        "probabilities": PROBABILITIES,
        "members": [],
        "fallback": None,
        "degraded": [],
        "latency_ms": 10.0,
        "model_version": "test",
        "image_sha256": "0" * 64,
        "abstained": False,
        "error": None,
        "shadow_of": None,
    }
    row.update(fields)
    return row


def _seed(session: Session) -> dict[str, list[str]]:
    """Twelve served predictions (plus a shadow run) covering each filter; ids by kind."""
    rows = [
        _row(0, "bagging"),  # correct
        _row(1, "bagging"),  # wrong: it was a Dress
        _row(2, "bagging", abstained=True),  # unlabelled, abstained
        _row(3, "boosting"),  # correct
        _row(4, "boosting"),  # wrong
        _row(
            5,
            "boosting",
            error="every member failed",
            label=None,
            class_index=None,
            confidence=None,
            probabilities=None,
        ),
        _row(6, "ab", "bagging"),  # correct
        _row(7, "ab", "boosting"),  # wrong
        _row(8, "ab", "boosting"),  # unlabelled
        _row(9, "stacking", fallback={"reason": "meta", "model": "bagging-2"}),  # unlabelled
        _row(10, "stacking"),  # correct
        _row(11, "stacking"),  # unlabelled
    ]
    verdicts = {0: BAG, 1: DRESS, 3: BAG, 4: DRESS, 6: BAG, 7: DRESS, 10: BAG}
    ids = add_predictions(session, rows, verdicts)
    add_predictions(session, [_row(12, "ab", "stacking", shadow_of=ids[6])])
    return {
        "all": ids[::-1],
        "correct": [ids[i] for i in (10, 6, 3, 0)],
        "wrong": [ids[i] for i in (7, 4, 1)],
        "unlabelled": [ids[i] for i in (11, 9, 8, 5, 2)],
        "strategy=ab": [ids[i] for i in (8, 7, 6)],
        "arm=boosting": [ids[i] for i in (8, 7, 5, 4, 3)],
    }


# --- the store ----------------------------------------------------------------------------


#: A session on a fresh migrated database (SQLite, or PostgreSQL too where marked).
session = test_store_units.session


def _ids(page: store.PredictionPage) -> list[str]:
    return [row.id for row in page.rows]


@pytest.mark.postgres
def test_filters_each_way_and_combined(session: Session) -> None:
    ids = _seed(session)
    listed = lambda **f: _ids(store.list_predictions(session, PredictionFilter(**f)))  # noqa: E731
    assert listed() == ids["all"]  # newest first, the shadow run left out
    for outcome in ("correct", "wrong", "unlabelled"):
        assert listed(outcome=outcome) == ids[outcome]
    assert listed(strategy="ab") == ids["strategy=ab"]
    assert listed(arm="boosting") == ids["arm=boosting"]
    assert listed(strategy="ab", arm="boosting", outcome="wrong") == ids["strategy=ab"][1:2]
    assert listed(strategy="nobody") == []


@pytest.mark.postgres
def test_rows_carry_verdict_true_class_and_flags(session: Session) -> None:
    _seed(session)
    rows = {row.created_at: row for row in store.list_predictions(session).rows}
    wrong, abstained, failed = (
        rows[T0 + timedelta(seconds=1)],
        rows[T0 + timedelta(seconds=2)],
        rows[T0 + timedelta(seconds=5)],
    )
    assert (wrong.outcome, wrong.true_label, wrong.true_class_index) == ("wrong", "Dress", DRESS)
    assert (abstained.outcome, abstained.abstained, abstained.true_label) == (
        "unlabelled",
        True,
        None,
    )
    assert failed.error and failed.label is None and failed.outcome == "unlabelled"
    assert rows[T0 + timedelta(seconds=9)].fallback_model == "bagging-2"
    assert rows[T0].outcome == "correct" and rows[T0].true_label == "Bag"


@pytest.mark.postgres
def test_keyset_pages_walk_every_row_once_both_ways(session: Session) -> None:
    """Seven rows share one timestamp (ties break by id): pages of three never skip or repeat."""
    rows = [_row(0) for _ in range(7)] + [_row(s) for s in (1, 2, 3)]
    add_predictions(session, rows)
    everything = _ids(store.list_predictions(session, limit=100))
    assert len(everything) == 10
    pages, page = [], store.list_predictions(session, limit=3)
    assert page.newer is None
    while True:
        pages.append(_ids(page))
        if page.older is None:
            break
        page = store.list_predictions(session, before=page.older, limit=3)
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert sum(pages, []) == everything
    back = []
    while page.newer is not None:
        page = store.list_predictions(session, after=page.newer, limit=3)
        back.append(_ids(page))
    assert back == pages[-2::-1]  # the same pages, newest last
    assert page.older is not None


@pytest.mark.postgres
def test_page_boundaries(session: Session) -> None:
    add_predictions(session, [_row(s) for s in range(2 * PAGE_SIZE)])
    first = store.list_predictions(session)
    assert len(first.rows) == PAGE_SIZE and first.newer is None and first.older is not None
    second = store.list_predictions(session, before=first.older)
    assert len(second.rows) == PAGE_SIZE and second.older is None  # exactly full: no third page
    assert second.newer is not None
    assert _ids(store.list_predictions(session, after=second.newer)) == _ids(first)
    oldest = second.rows[-1].cursor
    assert store.list_predictions(session, before=oldest) == store.PredictionPage([], None, None)


@pytest.mark.postgres
def test_export_is_bounded_newest_first(session: Session) -> None:
    ids = _seed(session)
    exported = [row.id for row in store.export_predictions(session, limit=5)]
    assert exported == ids["all"][:5]
    wrong = [row.id for row in store.export_predictions(session, PredictionFilter(outcome="wrong"))]
    assert wrong == ids["wrong"]


@pytest.mark.postgres
def test_stored_names_come_from_the_rollups(session: Session) -> None:
    _seed(session)
    strategies, arms = store.stored_names(session)
    assert strategies == ["ab", "bagging", "boosting", "stacking"]
    assert arms == ["bagging", "boosting", "stacking"]  # ab is an experiment, not an arm


def test_cursor_round_trips_and_refuses_anything_else() -> None:
    cursor = Cursor(T0 + timedelta(microseconds=123456), "a" * 32)
    assert Cursor.parse(cursor.token()) == cursor
    for token in ("", "20261201T120000-" + "a" * 32, cursor.token() + "x", "../../etc/passwd"):
        with pytest.raises(ValueError):
            Cursor.parse(token)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "ix_predictions_created_at"),
        ({"outcome": "wrong"}, "ix_predictions_created_at"),
        ({"outcome": "unlabelled"}, "ix_predictions_created_at"),
        ({"strategy": "ab"}, "ix_predictions_strategy_created_at"),
        ({"arm": "boosting"}, "ix_predictions_arm_created_at"),
        (
            {"strategy": "ab", "arm": "boosting", "outcome": "correct"},
            "ix_predictions_(strategy|arm)_created_at",
        ),
    ],
)
@pytest.mark.parametrize("paged", [False, True])
def test_sqlite_reads_a_page_along_a_time_index(session: Session, filters, index, paged) -> None:
    """SQLite has no statistics: the page must still be a range of a time-ordered index, never
    a sort of every matching row (seconds at a million rows)."""
    statements: list[tuple[str, Any]] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append((statement, parameters))

    event.listen(session.get_bind(), "before_cursor_execute", seen)
    cursor = Cursor(T0, "a" * 32) if paged else None
    store.list_predictions(session, PredictionFilter(**filters), before=cursor)
    statement, parameters = statements[-1]
    plan = " | ".join(
        row[-1]
        for row in session.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN " + statement, parameters
        )
    )
    assert re.search(rf"(SEARCH|SCAN) predictions USING INDEX {index}\b", plan), plan
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan


# --- the pages ----------------------------------------------------------------------------


@pytest.fixture
def seeded(app) -> dict[str, list[str]]:
    with app.app_context():
        return _seed(store.get_session())


def _listed(client, admin_headers, query: str = "") -> list[str]:
    response = client.get(f"{URL}{query}", headers=admin_headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return ID_LINK.findall(response.get_data(as_text=True))


@pytest.mark.parametrize("url", [URL, CSV_URL])
def test_admin_only(make_app, client, basic_auth, admin_headers, url):
    assert client.get(url).status_code == 401
    assert client.get(url, headers=basic_auth("admin", "wrong")).status_code == 401
    assert client.get(url).headers["WWW-Authenticate"].startswith("Basic")
    off = make_app(ADMIN_PASSWORD=None).test_client()
    assert off.get(url, headers=admin_headers).status_code == 403


def test_the_list_filters_each_way(client, admin_headers, seeded):
    assert _listed(client, admin_headers) == seeded["all"]
    for outcome in ("correct", "wrong", "unlabelled"):
        assert _listed(client, admin_headers, f"?outcome={outcome}") == seeded[outcome]
    assert _listed(client, admin_headers, "?strategy=ab") == seeded["strategy=ab"]
    assert _listed(client, admin_headers, "?arm=boosting") == seeded["arm=boosting"]
    # The form's "any" sends empty values.
    assert _listed(client, admin_headers, "?strategy=&arm=&outcome=wrong") == seeded["wrong"]


def test_the_list_shows_true_class_abstention_time_and_latency(client, admin_headers, seeded):
    html = client.get(f"{URL}?outcome=wrong&strategy=bagging", headers=admin_headers).get_data(
        as_text=True
    )
    assert '<span class="bad">wrong</span>: was Dress' in html
    assert '"nowrap">2026-12-01</span> <span class="nowrap">12:00:01 UTC</span>' in html
    assert ">10.0 ms</td>" in html
    assert "<caption>" in html and 'scope="col"' in html and 'scope="row"' in html
    for label in ("Requested strategy", "Served by (arm)", "Verdict"):
        assert f">{label}</label>" in html
    html = client.get(f"{URL}?outcome=unlabelled", headers=admin_headers).get_data(as_text=True)
    abstained = re.search(
        rf'data-prediction="{seeded["unlabelled"][-1]}".*?data-label="Abstained">(.*?)</td>',
        html,
        re.S,
    )
    assert abstained is not None and abstained.group(1) == "<strong>yes</strong>"
    assert "selected>Unlabelled</option>" in html
    # The prediction id links to its result page, which exists.
    assert client.get(f"/predictions/{seeded['all'][0]}").status_code == 200


def test_pages_link_older_and_newer_keeping_the_filters(app, client, admin_headers):
    with app.app_context():
        add_predictions(store.get_session(), [_row(s, "boosting") for s in range(PAGE_SIZE + 5)])
    html = client.get(f"{URL}?strategy=boosting", headers=admin_headers).get_data(as_text=True)
    assert len(ID_LINK.findall(html)) == PAGE_SIZE
    assert "Newer" not in html
    older = re.search(r'href="([^"]+)" rel="next">Older', html)
    assert older is not None and "strategy=boosting" in older.group(1)
    html2 = client.get(older.group(1).replace("&amp;", "&"), headers=admin_headers).get_data(
        as_text=True
    )
    assert len(ID_LINK.findall(html2)) == 5 and "Older" not in html2
    newer = re.search(r'href="([^"]+)" rel="prev">', html2)
    assert newer is not None and 'href="/admin/predictions?strategy=boosting">Newest' in html2
    html3 = client.get(newer.group(1).replace("&amp;", "&"), headers=admin_headers).get_data(
        as_text=True
    )
    assert ID_LINK.findall(html3) == ID_LINK.findall(html)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("?strategy=nope", "There is no strategy 'nope'"),
        ("?strategy=../../etc/passwd", "There is no strategy"),
        ("?arm=" + "x" * 500, "There is no arm"),
        ("?outcome=maybe", "outcome must be one of correct, wrong, unlabelled"),
        ("?outcome=correct&outcome=wrong", "Give outcome once"),
        ("?before=yesterday", "is not a page of this list"),
        ("?after=20261201T120000000000-" + "g" * 32, "is not a page of this list"),
        (
            "?before=20261201T120000000000-"
            + "a" * 32
            + "&after=20261201T120000000000-"
            + "a" * 32,
            "not both",
        ),
        ("?page=2", "Unknown parameter 'page'"),
        ("?strategy=%00", "There is no strategy"),
    ],
)
def test_bad_parameters_answer_400_saying_why(client, admin_headers, seeded, query, says):
    response = client.get(URL + query, headers=admin_headers)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert says in html.replace("&#39;", "'")
    assert 'role="alert"' in html and 'name="strategy"' in html  # the form, to fix it
    response = client.get(CSV_URL + query, headers=admin_headers)
    assert response.status_code == 400
    assert response.mimetype == "text/html"


def test_a_stored_name_of_a_deleted_ensemble_is_still_a_filter(app, client, admin_headers):
    with app.app_context():
        add_predictions(store.get_session(), [_row(0, "gone-vote")])
    assert len(_listed(client, admin_headers, "?strategy=gone-vote")) == 1
    assert len(_listed(client, admin_headers, "?arm=gone-vote")) == 1
    # Members are arms a created experiment may route to, before any traffic.
    assert _listed(client, admin_headers, "?arm=bagging-0") == []


def _csv(client, admin_headers, query: str = "") -> list[list[str]]:
    response = client.get(CSV_URL + query, headers=admin_headers)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="chorus-predictions-\d{8}T\d{6}Z\.csv"', disposition)
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_csv_export_has_a_header_and_the_filtered_rows(client, admin_headers, seeded):
    from views.admin.predictions import CSV_HEADER

    table = _csv(client, admin_headers)
    assert tuple(table[0]) == CSV_HEADER
    assert [r[0] for r in table[1:]] == seeded["all"]
    wrong = _csv(client, admin_headers, "?outcome=wrong&strategy=ab")
    assert [r[0] for r in wrong[1:]] == seeded["wrong"][:1]
    cells = dict(zip(CSV_HEADER, wrong[1], strict=True))
    assert cells["outcome"] == "wrong" and cells["true_class"] == "Dress"
    assert cells["created_at"] == "2026-12-01T12:00:07+00:00"
    assert (cells["strategy"], cells["experiment"], cells["arm"]) == ("ab", "ab", "boosting")
    assert cells["abstained"] == "false" and cells["latency_ms"] == "10.000"
    assert _csv(client, admin_headers, "?strategy=stacking&outcome=wrong") == [list(CSV_HEADER)]


def test_csv_cells_never_start_a_formula(app, client, admin_headers):
    dangerous = ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=x"]
    with app.app_context():
        rows = [_row(i, label=v, model_version=v[:60]) for i, v in enumerate(dangerous)]
        add_predictions(store.get_session(), rows)
    table = _csv(client, admin_headers)
    header = table[0]
    for line, value in zip(table[1:], reversed(dangerous), strict=True):
        cells = dict(zip(header, line, strict=True))
        assert cells["label"] == "'" + value and cells["model_version"] == "'" + value[:60]
    for line in table:
        for cell in line:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


def test_csv_export_is_bounded(monkeypatch, client, admin_headers, seeded):
    monkeypatch.setattr("views.admin.predictions.EXPORT_LIMIT", 4)
    table = _csv(client, admin_headers)
    assert [r[0] for r in table[1:]] == seeded["all"][:4]
    assert client.get(URL, headers=admin_headers).status_code == 200
    html = client.get(URL, headers=admin_headers).get_data(as_text=True)
    assert 'href="/admin/predictions.csv"' in html and "Export CSV" in html


def test_csv_refuses_a_page_cursor(client, admin_headers):
    token = Cursor(T0, "a" * 32).token()
    response = client.get(f"{CSV_URL}?before={token}", headers=admin_headers)
    assert response.status_code == 400


def test_overview_lists_the_ten_newest_and_links_to_all(app, client, admin_headers):
    with app.app_context():
        ids = add_predictions(store.get_session(), [_row(s) for s in range(15)])
    html = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    assert ID_LINK.findall(html) == ids[::-1][:10]
    assert f'href="{URL}">All predictions →</a>' in html


@pytest.mark.browser
@pytest.mark.slow
def test_the_list_fits_a_phone_passes_axe_and_filters_from_the_keyboard(
    open_session, live_server, admin_credentials
):
    """At 390 px every cell of every row is on the screen and nothing scrolls sideways; no
    serious axe-core violation; a filter is chosen and applied with the keyboard alone."""
    with live_server.app.app_context():
        session = store.get_session()
        _seed(session)
        long_name = "a-created-ensemble-with-a-rather-long-name-that-must-wrap-somewhere"
        add_predictions(session, [_row(20, long_name, model_version="20261201-120000-long")])
    visitor = open_session(
        viewport=test_browser.PHONE,
        is_mobile=True,
        has_touch=True,
        bypass_csp=True,  # axe is injected as an inline script
        http_credentials=admin_credentials,
    )
    page = visitor.page
    assert page.goto(URL).status == 200
    width = test_browser.PHONE["width"]
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    rows = page.locator("table.predictions tbody tr")
    assert rows.count() == 13
    for cell in page.locator("table.predictions tbody tr:first-child > *").all():
        box = cell.bounding_box()
        assert box is not None and box["width"] > 0, "a column is hidden"
        assert 0 <= box["x"] and box["x"] + box["width"] <= width
    assert test_browser.axe_violations(page) == []
    table = page.get_by_role("table", name=re.compile("Predictions, newest first"))
    assert table.get_by_role("columnheader", name="Verdict").count() == 1
    page.get_by_label("Verdict").focus()
    page.keyboard.press("ArrowDown")  # Any verdict -> Right answers
    page.keyboard.press("ArrowDown")  # -> Wrong answers
    page.get_by_role("button", name="Show").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"outcome=wrong"))
    assert page.locator("table.predictions tbody tr").count() == 3
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    # Wider screens: stacked on a tablet, a table from about 1000 px; never sideways either way.
    for wide in (800, 1024, 1280):
        page.set_viewport_size({"width": wide, "height": 900})
        page.goto(URL)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= wide, wide
    visitor.assert_clean()
