"""Admin auth, and the admin numbers checked against hand computations on known records."""

from __future__ import annotations

import math
import re

import pytest

import store

ADMIN_URLS = [
    "/admin",
    "/admin/experiments",
    "/admin/experiments/ab",
    "/api/v1/stats",
    "/api/v1/experiments/ab/results",
    "/api/v1/experiments",
    "/api/v1/inference/ensemble",
]
AB_PAGE = "/admin/experiments/ab"
Z = 1.959963984540054  # two-sided 95 % normal quantile


@pytest.mark.parametrize("url", ADMIN_URLS)
def test_admin_is_off_without_a_password(make_app, url, admin_headers):
    client = make_app(ADMIN_PASSWORD=None).test_client()
    response = client.get(url, headers=admin_headers)
    assert response.status_code == 403
    assert "admin is disabled: set ADMIN_PASSWORD" in response.get_data(as_text=True)


@pytest.mark.parametrize("url", ADMIN_URLS)
@pytest.mark.parametrize(
    "credentials",
    [None, ("admin", "wrong"), ("root", "s3cret-admin"), ("admin", ""), ("admin", "pässwörd")],
)
def test_wrong_credentials_get_a_401_challenge(client, basic_auth, url, credentials):
    headers = basic_auth(*credentials) if credentials else {}
    response = client.get(url, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert 'realm="Chorus admin"' in response.headers["WWW-Authenticate"]
    if url.startswith("/api/"):
        assert "admin" in response.get_json()["error"]


@pytest.mark.parametrize("url", ADMIN_URLS)
def test_right_credentials_get_in(client, admin_headers, url):
    response = client.get(url, headers=admin_headers)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"


def test_empty_admin_pages_say_no_data(client, admin_headers):
    html = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    assert "No predictions yet" in html
    assert 'href="/admin/experiments/ab"' in html  # the built-in experiment is listed
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    assert "no data" in html
    assert "No data: no prediction of this experiment has feedback yet" in html


def _add(session, strategy, arm, *, correct=None, latency=10.0, confidence=0.8, fallback=None,
         error=None):
    """Insert one prediction (and its feedback) directly, as the service would have."""
    answer = {} if error else {
        "label": "Bag",
        "class_index": 8,
        "confidence": confidence,
        "probabilities": {"Bag": confidence},
        "members": [],
        "fallback": fallback,
        "degraded": [],
    }
    row = store.add_prediction(
        session,
        strategy=strategy,
        arm=arm,
        latency_ms=latency,
        model_version="test",
        image_sha256="0" * 64,
        error=error,
        **answer,
    )
    if correct is not None:
        store.record_feedback(session, row, 8 if correct else 3)
    return row


def wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson score interval, written out from the textbook formula."""
    p = x / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture
def known_records(app):
    """Bagging: 12 served (10 labelled, 7 right), 1 error. Boosting: 8 served, all labelled, 7
    right, 1 fallback. Plus direct traffic, which must not leak into the A/B numbers."""
    with app.app_context():
        session = store.get_session()
        for i in range(12):
            correct = (i < 7) if i < 10 else None
            _add(session, "ab", "bagging", correct=correct, latency=10.0 * (i + 1),
                 confidence=0.5 + 0.04 * i)
        _add(session, "ab", "bagging", error="NoMembersLeftError: all members failed")
        for i in range(8):
            fallback = {"reason": "test", "model": "m"} if i == 0 else None
            _add(session, "ab", "boosting", correct=i < 7, latency=5.0 * (i + 1), fallback=fallback)
        for i in range(5):
            _add(session, "stacking", "stacking", correct=i < 4, latency=3.0)
        _add(session, "bagging", "bagging", correct=False, latency=1.0)


def test_ab_results_match_hand_computation(client, admin_headers, known_records):
    body = client.get("/api/v1/experiments/ab/results?mde=0.05", headers=admin_headers).get_json()
    bagging, boosting = body["arms"]["bagging"], body["arms"]["boosting"]

    assert (bagging["served"], bagging["labelled"], bagging["correct"]) == (12, 10, 7)
    assert (bagging["errors"], bagging["fallbacks"]) == (1, 0)
    assert (boosting["served"], boosting["labelled"], boosting["correct"]) == (8, 8, 7)
    assert (boosting["errors"], boosting["fallbacks"]) == (0, 1)

    assert bagging["accuracy"] == pytest.approx(0.7)
    assert boosting["accuracy"] == pytest.approx(0.875)
    # Wilson 7/10 by hand: centre 0.64449, half-width 0.24771.
    assert (bagging["ci_low"], bagging["ci_high"]) == pytest.approx((0.39677, 0.89220), abs=1e-5)
    assert (bagging["ci_low"], bagging["ci_high"]) == pytest.approx(wilson(7, 10))
    assert (boosting["ci_low"], boosting["ci_high"]) == pytest.approx(wilson(7, 8))

    # Latencies 10..120 ms: p50 = (60 + 70) / 2; p95 at rank 0.95 * 11 = 10.45 -> 110 + 0.45 * 10.
    assert bagging["latency_p50_ms"] == pytest.approx(65.0)
    assert bagging["latency_p95_ms"] == pytest.approx(114.5)
    # Latencies 5..40 ms: p50 = 22.5; p95 at rank 6.65 -> 35 + 0.65 * 5.
    assert boosting["latency_p50_ms"] == pytest.approx(22.5)
    assert boosting["latency_p95_ms"] == pytest.approx(38.25)
    assert bagging["mean_confidence"] == pytest.approx(0.5 + 0.04 * 5.5)

    # Pooled two-proportion z-test: pooled p = 14/18.
    pooled = 14 / 18
    z = (0.875 - 0.7) / math.sqrt(pooled * (1 - pooled) * (1 / 10 + 1 / 8))
    assert body["difference"]["boosting_minus_bagging"] == pytest.approx(0.175)
    assert body["difference"]["z"] == pytest.approx(z)
    assert body["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert body["p_value"] == pytest.approx(0.3749, abs=1e-4)  # z = 0.8874
    assert 0.5 < body["prob_boosting_better"] < 1.0

    # SRM on served counts 12 vs 8 with a 50/50 split: chi2 = 0.4 + 0.4.
    assert body["srm_p_value"] == pytest.approx(math.erfc(math.sqrt(0.8 / 2)))
    assert body["srm_ok"] is True
    assert body["mde"] == 0.05
    assert isinstance(body["samples_needed_per_arm"], int)


def test_stats_totals_by_requested_strategy(client, admin_headers, known_records):
    body = client.get("/api/v1/stats", headers=admin_headers).get_json()
    assert body["total_predictions"] == 13 + 8 + 5 + 1
    by = body["by_strategy"]
    assert set(by) == {"bagging", "boosting", "stacking", "cascade", "ab"}
    assert (by["ab"]["served"], by["ab"]["errors"], by["ab"]["labelled"]) == (20, 1, 18)
    assert (by["stacking"]["served"], by["stacking"]["correct"]) == (5, 4)
    assert (by["bagging"]["served"], by["bagging"]["correct"]) == (1, 0)
    assert by["boosting"]["served"] == 0
    assert sum(s["served"] + s["errors"] for s in by.values()) == body["total_predictions"]


def test_admin_pages_show_the_same_numbers(client, admin_headers, known_records):
    html = client.get(AB_PAGE + "?mde=0.05", headers=admin_headers).get_data(as_text=True)
    assert "70.0%" in html and "87.5%" in html  # accuracies
    assert "39.7% – 89.2%" in html  # bagging's Wilson interval
    assert "65.0 ms" in html and "114.5 ms" in html  # bagging latency p50 / p95
    assert "17.50%" in html  # the difference
    assert "0.375" in html  # p-value
    assert "OK" in html  # SRM
    assert "<polyline" in html and 'class="series s0"' in html  # accuracy chart
    assert "bagging: 100.0% after 1 label</title>" in html
    assert "bagging: 70.0% after 10 labels</title>" in html
    overview = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    assert overview.count("<tr>") >= 27  # recent predictions
    assert "<td class=\"num\">120.0 ms</td>" in overview  # a recent prediction's latency
    assert "<td><code>test</code></td>" in overview  # and its model version
    assert "80.0%" in overview  # stacking's direct accuracy (4/5)


@pytest.mark.parametrize("mde", ["abc", "0", "-0.1", "0.9", "nan", "inf"])
def test_bad_mde_is_refused(client, admin_headers, mde):
    page = client.get(f"{AB_PAGE}?mde={mde}", headers=admin_headers)
    assert page.status_code == 400
    assert re.search(r'class="field-error">[^<]+', page.get_data(as_text=True))
    api = client.get(f"/api/v1/experiments/ab/results?mde={mde}", headers=admin_headers)
    assert api.status_code == 400
    assert api.get_json()["error"].startswith("mde:")


def test_mde_changes_samples_needed(client, admin_headers, known_records):
    def needed(mde):
        url = f"/api/v1/experiments/ab/results?mde={mde}"
        return client.get(url, headers=admin_headers).get_json()["samples_needed_per_arm"]

    assert needed(0.01) > needed(0.05) > needed(0.2)


def test_p_value_is_null_while_an_arm_has_no_labels(app, client, admin_headers):
    with app.app_context():
        session = store.get_session()
        for i in range(4):
            _add(session, "ab", "bagging", correct=i < 3)
        _add(session, "ab", "boosting")  # served, never labelled
    body = client.get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    assert body["arms"]["boosting"]["served"] == 1
    assert body["arms"]["boosting"]["labelled"] == 0
    assert body["p_value"] is None and body["prob_boosting_better"] is None
    assert body["difference"]["boosting_minus_bagging"] is None
    # Bagging's 3/4 is the baseline, 0.75 -> 0.77 at the default mde: (1.95996 * sqrt(2 * .76 *
    # .24) + 0.84162 * sqrt(.1875 + .1771))^2 / .02^2 = (1.18379 + 0.50819)^2 / .0004 = 7156.9993
    # -> 7157 per arm, minus the 0 labels of the smaller arm.
    assert body["samples_needed_per_arm"] == 7157
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    assert "no data" in html and "7157" in html


@pytest.mark.parametrize(("split", "expected_chi2"), [(0.2, 0.0), (0.5, 3.6)])
def test_srm_checks_served_counts_against_ab_split(make_app, admin_headers, split, expected_chi2):
    app = make_app(AB_SPLIT=split)
    with app.app_context():
        session = store.get_session()
        for arm, count in (("bagging", 8), ("boosting", 2)):
            for _ in range(count):
                _add(session, "ab", arm)
    body = app.test_client().get(
        "/api/v1/experiments/ab/results", headers=admin_headers
    ).get_json()
    # 8 vs 2 served; expected 8/2 at 20 % Boosting (chi2 0), 5/5 at 50 % (9/5 + 9/5 = 3.6).
    assert body["srm_p_value"] == pytest.approx(math.erfc(math.sqrt(expected_chi2 / 2)))
    assert body["srm_ok"] is True


def test_accuracy_over_time_is_cumulative_per_arm(app, known_records):
    reports = app.extensions["chorus"].reports
    with app.app_context():
        series = reports.accuracy_series("ab")
        sampled = reports.accuracy_series("ab", max_points=4)
    assert set(series) == {"bagging", "boosting"}  # direct traffic stays out
    # Bagging's labels in time order: 7 right then 3 wrong.
    assert [round(v, 4) for _, v, _ in series["bagging"]] == [1.0] * 7 + [0.875, 0.7778, 0.7]
    assert [n for _, _, n in series["bagging"]] == list(range(1, 11))
    assert [(round(v, 4), n) for _, v, n in sampled["bagging"]] == [
        (1.0, 3), (1.0, 6), (0.7778, 9), (0.7, 10)
    ]
    assert series["boosting"][-1][1:] == (0.875, 8)


def test_admin_page_writes_negative_percentages_with_a_minus_sign(client, admin_headers,
                                                                  known_records):
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    ci = re.search(r"\(95% CI (\S+%) to (\S+%)\)", html)
    assert ci is not None and ci.group(1).startswith("\u2212")  # the difference's CI crosses 0
    assert "-" not in ci.group(0)


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [(-0.1284, 2, "\u221212.84%"), (0.1284, 2, "12.84%"), (-1.0, 0, "\u2212100%"),
     (0.0, 1, "0.0%"), (-0.00001, 1, "0.0%"), (None, 1, "—")],
)
def test_pct_uses_a_real_minus_sign(value, digits, text):
    from views.templating import pct

    assert pct(value, digits) == text


@pytest.mark.parametrize(
    ("value", "text"), [(-1.2345, "\u22121.234"), (2.5, "2.500"), (-0.0001, "0.000"), (None, "—")]
)
def test_num_uses_the_same_minus_sign(value, text):
    from views.templating import num

    assert num(value) == text


def test_admin_chart_labels_the_top_of_its_axis(client, admin_headers, known_records):
    """Accuracies from 70 % to 100 %: seven 5 % steps, every second one labelled."""
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    ticks = re.findall(r'<text class="tick" x="\d+" y="([\d.]+)" text-anchor="end"[^>]*>(\d+%)<',
                       html)
    assert ticks[-1][1] == "100%" and ticks[0][1].endswith("0%")


def _chart(low: float, high: float):
    from datetime import datetime, timedelta

    from views.charts import line_chart

    start = datetime(2026, 1, 1)
    return line_chart({"bagging": [(start, low, 1), (start + timedelta(hours=1), high, 2)]})


def test_chart_axis_always_labels_and_grids_its_top_and_bottom():
    """Whatever the data's range, both ends of the y axis carry a label and a gridline."""
    for lo in range(101):
        for hi in range(lo, 101):
            chart = _chart(lo / 100, hi / 100)
            (bottom_y, bottom), *_, (top_y, top) = chart.y_ticks
            assert (bottom_y, top_y) == (chart.bottom, chart.top), (lo, hi, chart.y_ticks)
            assert int(bottom[:-1]) <= lo and int(top[:-1]) >= hi, (lo, hi, chart.y_ticks)
            assert all(chart.top <= y <= chart.bottom for _, y, _ in chart.lines[0].dots)
            assert 3 <= len(chart.y_ticks) <= 7


def test_chart_reported_case_gets_a_100_percent_label():
    chart = _chart(0.7, 1.0)
    assert [label for _, label in chart.y_ticks] == ["60%", "70%", "80%", "90%", "100%"]
