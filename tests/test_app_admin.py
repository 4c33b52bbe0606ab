"""Admin auth, and the admin numbers checked against hand computations on known records."""

from __future__ import annotations

import math
import re

import pytest
from scipy import stats as scipy_stats

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


def _add(
    session, strategy, arm, *, correct=None, latency=10.0, confidence=0.8, fallback=None, error=None
):
    """Insert one prediction (and its feedback) directly, as the service would have."""
    answer = (
        {}
        if error
        else {
            "label": "Bag",
            "class_index": 8,
            "confidence": confidence,
            "probabilities": {"Bag": confidence},
            "members": [],
            "fallback": fallback,
            "degraded": [],
        }
    )
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
            _add(
                session,
                "ab",
                "bagging",
                correct=correct,
                latency=10.0 * (i + 1),
                confidence=0.5 + 0.04 * i,
            )
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

    # The unit-level comparison; without client ids every request is its own unit, so it is
    # Welch's test on the two proportions: unpooled variances p (1 - p) / n, Welch-Satterthwaite
    # degrees of freedom, t tails.
    var_bagging, var_boosting = 0.7 * 0.3 / 10, 0.875 * 0.125 / 8
    se = math.sqrt(var_bagging + var_boosting)
    dof = (var_bagging + var_boosting) ** 2 / (var_bagging**2 / 9 + var_boosting**2 / 7)
    assert body["difference"]["boosting_minus_bagging"] == pytest.approx(0.175)
    assert body["difference"]["z"] == pytest.approx(0.175 / se)
    assert body["p_value"] == pytest.approx(2 * scipy_stats.t.sf(0.175 / se, dof))
    assert body["p_value"] == pytest.approx(0.3614, abs=1e-4)  # t = 0.9398, 15.88 dof
    half = scipy_stats.t.ppf(0.975, dof) * se
    assert body["difference"]["ci_low"] == pytest.approx(0.175 - half)
    assert body["difference"]["ci_high"] == pytest.approx(0.175 + half)
    boosting_vs_bagging = body["comparisons"]["boosting"]
    assert boosting_vs_bagging["absolute"]["p_value"] == body["p_value"]
    assert boosting_vs_bagging["chance_to_win"] == body["prob_boosting_better"]
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
    assert "0.361" in html  # p-value
    assert "OK" in html  # SRM
    assert "<polyline" in html and 'class="series s0"' in html  # accuracy chart
    assert "bagging: 100.0% after 1 label</title>" in html
    assert "bagging: 70.0% after 10 labels</title>" in html
    overview = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    recent = overview.split('id="recent"')[1]
    assert recent.count('<tr role="row" data-prediction=') == 10  # the newest ten predictions
    assert 'data-label="Latency" class="num">40.0 ms</td>' in recent  # a recent one's latency
    assert '<code class="name">test</code>' in recent  # and its model version
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


def test_the_page_takes_and_shows_the_difference_in_percentage_points(
    client, admin_headers, known_records
):
    api = client.get("/api/v1/experiments/ab/results?mde=0.05", headers=admin_headers)
    page = client.get(AB_PAGE + "?mde_pp=5", headers=admin_headers)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "(percentage points)" in html
    assert 'name="mde_pp" step="0.1" type="number" value="5"' in html
    needed = api.get_json()["comparisons"]["boosting"]["samples_needed_per_arm"]
    assert f"<strong>{needed}</strong> more labelled predictions" in html
    assert (
        "difference of 5.0 percentage points" in html
        and "5.0%" not in html.split("How much")[1][:600]
    )
    for bad in ("0.05", "60", "x"):
        assert client.get(f"{AB_PAGE}?mde_pp={bad}", headers=admin_headers).status_code == 400


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
    body = app.test_client().get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    # 8 vs 2 served; expected 8/2 at 20 % Boosting (chi2 0), 5/5 at 50 % (9/5 + 9/5 = 3.6).
    assert body["srm_p_value"] == pytest.approx(math.erfc(math.sqrt(expected_chi2 / 2)))
    assert body["srm_ok"] is True


def test_accuracy_over_labelled_outcomes_is_cumulative_per_arm(app, known_records):
    reports = app.extensions["chorus"].reports
    with app.app_context():
        series = reports.lift_series("ab")
        sampled = reports.lift_series("ab", max_points=4)
    assert set(series["accuracy"]) == {"bagging", "boosting"}  # direct traffic stays out
    assert series["labelled"] == 18
    bagging = series["accuracy"]["bagging"]
    # Bagging's labels come first, in time order: 7 right then 3 wrong; then Boosting's 8.
    assert [round(p["accuracy"], 4) for p in bagging] == [1.0] * 7 + [0.875, 0.7778, 0.7] + [
        0.7
    ] * 8
    assert [p["arm_labelled"] for p in bagging] == list(range(1, 11)) + [10] * 8
    assert [p["labelled"] for p in bagging] == list(range(1, 19))
    # Four points: three of the 17 earlier checkpoints spread evenly (6, 11, 17), then now.
    coarse = sampled["accuracy"]["bagging"]
    assert [(round(p["accuracy"], 4), p["arm_labelled"]) for p in coarse] == [
        (1.0, 6),
        (0.7, 10),
        (0.7, 10),
        (0.7, 10),
    ]
    assert [p["labelled"] for p in coarse] == [6, 11, 17, 18]
    last = series["accuracy"]["boosting"][-1]
    assert (last["accuracy"], last["arm_labelled"], last["labelled"]) == (0.875, 8, 18)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx(wilson(7, 8))
    # Boosting's first seven labels are all right: zero variance, nothing to test (gbstats
    # returns no result) until its wrong eighth; then the difference is the results' one, with
    # its always-valid interval.
    lift = series["lift"]["boosting"]
    assert [p["labelled"] for p in lift] == [18]
    with app.app_context():
        final = reports.results("ab")["comparisons"]["boosting"]
    assert lift[-1]["difference"] == pytest.approx(final["absolute"]["difference"])
    assert lift[-1]["ci_low"] == pytest.approx(final["sequential"]["ci_low"])
    assert lift[-1]["ci_high"] == pytest.approx(final["sequential"]["ci_high"])


def test_admin_page_writes_negative_percentages_with_a_minus_sign(
    client, admin_headers, known_records
):
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    ci = re.search(r"\(95% CI (\S+%) to (\S+%)\)", html)
    assert ci is not None and ci.group(1).startswith("\u2212")  # the difference's CI crosses 0
    assert "-" not in ci.group(0)


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (-0.1284, 2, "\u221212.84%"),
        (0.1284, 2, "12.84%"),
        (-1.0, 0, "\u2212100%"),
        (0.0, 1, "0.0%"),
        (-0.00001, 1, "0.0%"),
        (None, 1, "—"),
    ],
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
    ticks = re.findall(
        r'<text class="tick" x="\d+" y="([\d.]+)" text-anchor="end"[^>]*>(\d+%)<', html
    )
    assert ticks[-1][1] == "100%" and ticks[0][1].endswith("0%")


def _chart(low: float, high: float):
    from views.charts import Point, line_chart

    return line_chart({"bagging": [Point(1, low), Point(2, high)]})


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


def _experiment_with_traffic(
    client, admin_headers, image_png, name, *, users=30, per_user=3, right=0.8
):
    """A weighted bagging/boosting experiment with labelled traffic from sticky clients."""
    import io
    import random

    body = {
        "name": name,
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        "guardrails": {"fallback_rate": 0.5},
    }
    assert (
        client.post("/api/v1/inference/ensemble", json=body, headers=admin_headers).status_code
        == 201
    )
    rng = random.Random(11)
    for k in range(users * per_user):
        answer = client.post(
            "/api/v1/predict",
            data={
                "image": (io.BytesIO(image_png), "x.png"),
                "strategy": name,
                "client_id": f"user-{k % users}",
            },
        ).get_json()
        truth = (
            answer["label"]
            if rng.random() < right
            else next(c for c in answer["probabilities"] if c != answer["label"])
        )
        client.post(
            f"/api/v1/predictions/{answer['prediction_id']}/feedback", json={"label": truth}
        )
    return client.get(f"/api/v1/experiments/{name}/results", headers=admin_headers).get_json()


def test_overview_leads_with_each_experiments_verdict_and_interval_bars(
    client, admin_headers, image_png
):
    results = _experiment_with_traffic(client, admin_headers, image_png, "bars")
    html = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    verdicts = html.index('id="verdicts"')
    assert verdicts < html.index("Traffic by requested strategy")  # it leads the page
    comparison = results["comparisons"]["boosting"]
    assert f'<p class="verdict">{comparison["verdict"]}</p>' in html
    block = html[html.index('data-experiment="bars"') :]
    assert block.index('<svg class="interval') < block.index("</article>")
    low, high = comparison["sequential"]["ci_low"], comparison["sequential"]["ci_high"]
    text = f"always-valid 95% interval {_points(low)} to {_points(high)}"
    assert text in block  # the numbers as text beside the bar
    assert (
        f'aria-label="boosting minus control: {_points(comparison["absolute"]["difference"])}'
        f' points, {text} points"' in block
    )
    # ab has no labels: a plain sentence, no bar
    assert "boosting: too few labelled outcomes to compare with bagging yet" in html


def _points(value):
    from views.charts import points_text

    return points_text(value)


def test_experiment_page_shows_verdict_bars_charts_and_guardrails(client, admin_headers, image_png):
    results = _experiment_with_traffic(client, admin_headers, image_png, "charted")
    html = client.get("/admin/experiments/charted", headers=admin_headers).get_data(as_text=True)
    assert results["comparisons"]["boosting"]["verdict"] in html
    assert html.count('<svg class="interval') == 1
    assert "Difference from bagging over labelled outcomes" in html
    assert '<line class="zero"' in html  # the lift chart's zero line
    assert html.count('<polygon class="band') >= 2  # interval bands
    assert "labelled outcomes</text>" in html  # x axis: labelled outcomes, not time
    assert html.count("The chart's numbers") == 2  # each chart's table alternative
    guardrails = html[html.index('id="guardrails"') :]
    assert "fallback rate" in guardrails and '<span class="ok">within</span>' in guardrails
    assert "Report (frozen at the decision)" not in html
    assert "p = 0.000" not in html and "p = &lt;" not in html


def test_small_p_values_are_written_as_below_0_001(app, client, admin_headers):
    with app.app_context():
        session = store.get_session()
        for arm, count in (("bagging", 60), ("boosting", 10)):
            for _ in range(count):
                _add(session, "ab", arm)
    html = client.get(AB_PAGE, headers=admin_headers).get_data(as_text=True)
    assert '<span class="bad">mismatch</span>' in html
    assert "(p &lt; 0.001)" in html
    assert "p = 0.000" not in html and "p = &lt;" not in html


def test_decided_experiments_show_a_banner_the_frozen_report_and_the_registry(
    client, admin_headers, image_png
):
    _experiment_with_traffic(client, admin_headers, image_png, "won")
    _experiment_with_traffic(client, admin_headers, image_png, "lost", users=10)
    _experiment_with_traffic(client, admin_headers, image_png, "still-running", users=4)
    before = client.get("/admin/experiments/won/report", headers=admin_headers)
    assert before.status_code == 404
    assert "has no decision yet, so there is no report" in before.get_data(as_text=True)
    client.post(
        "/api/v1/experiments/won/promote",
        json={"model": "boosting", "reason": "better"},
        headers=admin_headers,
    )
    client.post(
        "/api/v1/experiments/lost/rollback", json={"reason": "too slow"}, headers=admin_headers
    )
    day = client.get("/api/v1/experiments/won", headers=admin_headers).get_json()["ended_at"][:10]

    page = client.get("/admin/experiments/won", headers=admin_headers).get_data(as_text=True)
    assert 'class="alert success decision-banner"' in page
    assert "Report (frozen at the decision)" in page
    assert f"Outcome: boosting promoted on {day}." in page
    assert f'<p class="verdict">promoted on {day}</p>' in page  # the live verdict now
    report = client.get("/admin/experiments/won/report", headers=admin_headers)
    assert report.status_code == 200
    html = report.get_data(as_text=True)
    assert f"Outcome: boosting promoted on {day}." in html and "Why: better" in html
    assert '<svg class="interval' in html and 'id="report-traffic"' in html
    assert "No guardrail was breached" in html

    listing = client.get("/admin/experiments", headers=admin_headers).get_data(as_text=True)
    registry = listing[listing.index('id="registry"') : listing.index('id="create"')]
    assert "still-running" not in registry
    rows = re.findall(r"<tr><td><a href=\"/admin/experiments/([\w-]+)\">.*?</tr>", registry, re.S)
    assert sorted(rows) == ["lost", "won"]
    won = re.search(r'experiments/won">won</a>.*?</tr>', registry, re.S).group(0)
    assert "promoted" in won and "<code>boosting</code>" in won and "better" in won
    lost = re.search(r'experiments/lost">lost</a>.*?</tr>', registry, re.S).group(0)
    assert "rolled back" in lost and "none" in lost and "too slow" in lost
    assert 'href="/admin/experiments/won/report"' in registry
    overview = client.get("/admin", headers=admin_headers).get_data(as_text=True)
    assert f"Outcome: boosting promoted on {day}." in overview
    assert f"Outcome: rolled back to bagging on {day}." in overview
