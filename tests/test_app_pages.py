"""The server-rendered site: upload pages, results, samples, feedback forms, CSRF, errors."""

from __future__ import annotations

import dataclasses
import io
import logging
import re

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError

import store
from ensembles.stacking import MetaModel
from views.hooks import CLIENT_COOKIE
from views.images import RecentThumbnails
from views.pages.leading import leading_fields
from views.pages.routes import THUMBNAILS
from views.samples import gallery
from views.templating import prob

PAGES = ["bagging", "boosting", "stacking", "ab"]


def prediction_id(html: str) -> str:
    return re.search(r"predictions/([0-9a-f]{32})/feedback", html).group(1)


@pytest.mark.parametrize("path", ["/", "/bagging", "/boosting", "/stacking", "/ab"])
def test_upload_pages_render(client, app_bundle, path):
    response = client.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html
    assert html.count('name="sample"') == len(gallery(app_bundle).samples) == 12
    assert "image-rendering" not in html  # pixelated look comes from the stylesheet
    # The only script is the vendored progressive enhancement, from our own origin.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/chorus.js" defer>']


def test_home_offers_the_four_choices(client):
    html = client.get("/").get_data(as_text=True)
    for value, label in [
        ("bagging", "Bagging"),
        ("boosting", "Boosting"),
        ("stacking", "Stacking"),
        ("ab", "A/B Test (Random)"),
    ]:
        assert f'value="{value}"' in html and label in html
    assert 'action="/predict"' in html


@pytest.mark.parametrize("strategy", PAGES)
def test_strategy_page_result(client, upload, app_bundle, strategy):
    response = client.post(f"/{strategy}", data={"image": upload()}, follow_redirects=True)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count('class="bar-row') == 3  # the top three; all ten in <details>
    assert html.count("<td>", html.index('class="all-classes"')) >= len(app_bundle.classes)
    assert html.count("data:image/png;base64,") >= 2  # the upload and the 28x28 canvas
    assert "What the model saw (28×28)" in html
    assert "Members&#39; votes" in html or "Members' votes" in html
    assert "Was this right?" in html
    assert app_bundle.version in html
    arm = strategy
    if strategy == "ab":
        served = re.search(r"served by <strong>(Bagging|Boosting)</strong>", html)
        assert served is not None
        arm = served.group(1).lower()
    members = app_bundle.ensembles[arm].member_names_
    # every member of the arm that served is in the votes table, and no member of another
    listed = re.findall(r"<td><code>([a-z]+-\d+)</code></td>", html)
    assert sorted(listed) == sorted(members)
    if strategy == "stacking":
        assert "The meta-model combined all" in html
    if strategy == "boosting":
        assert "Alpha (α)" in html


def test_home_form_dispatches_to_the_chosen_strategy(client, upload):
    html = client.post(
        "/predict", data={"image": upload(), "strategy": "boosting"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "Boosting combined its" in html


def test_sample_button_classifies_a_known_test_image(client, app_bundle):
    sample = gallery(app_bundle).samples[0]
    response = client.post(
        "/predict",
        data={"sample": str(sample.index), "strategy": "stacking"},
        follow_redirects=True,
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"This test image is labelled\n      <strong>{sample.label}</strong>" in html


def test_stacking_shows_the_fallback(client, upload, monkeypatch, admin_headers):
    def broken(self, member_probs):
        raise FloatingPointError("meta-model exploded")

    monkeypatch.setattr(MetaModel, "predict_proba", broken)
    html = client.post("/stacking", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    assert "Fallback answered." in html
    assert "meta-model raised FloatingPointError: meta-model exploded" in html
    stats = client.get("/api/v1/stats", headers=admin_headers).get_json()
    assert stats["by_strategy"]["stacking"]["fallbacks"] == 1


def test_degraded_members_are_listed(client, upload, app_bundle, monkeypatch):
    ensemble = app_bundle.ensembles["bagging"]
    real_predict = ensemble.predict

    def degraded(x):
        return dataclasses.replace(real_predict(x), degraded=["bagging-99"])

    monkeypatch.setattr(ensemble, "predict", degraded)
    html = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    assert "Members dropped from this answer" in html and "bagging-99" in html


def test_no_members_left_rerenders_the_form_with_503(client, upload, break_ensemble):
    message = break_ensemble("bagging")
    response = client.post("/bagging", data={"image": upload()}, follow_redirects=True)
    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert message in html and 'class="card upload"' in html


# The generic bad uploads run on every route in test_app_bad_input.py; these are the forms' own.
BAD_FORMS = [
    # (id, path, form fields, message)
    ("svg extension", "/ab", {"image": (b"<svg/>", "a.svg")}, "Upload an image file"),
    ("no extension", "/ab", {"image": (b"\x89PNG", "photo")}, "Upload an image file"),
    ("bad sample", "/bagging", {"sample": "10000"}, "Sample must be between 0 and 9999"),
    ("negative sample", "/bagging", {"sample": "-1"}, "Sample must be between"),
    ("sample path", "/bagging", {"sample": "../../etc/passwd"}, "Not a valid integer"),
    ("superscript sample", "/bagging", {"sample": "²"}, "Not a valid integer"),
]


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [case[1:] for case in BAD_FORMS],
    ids=[case[0] for case in BAD_FORMS],
)
def test_bad_form_input_rerenders_the_form(client, path, fields, message):
    data = dict(fields)
    if "image" in data:
        content, name = data["image"]
        data["image"] = (io.BytesIO(content), name)
    response = client.post(path, data=data)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert 'class="card upload"' in html  # the form, not a bare error page


def test_oversize_beats_the_csrf_check(make_app):
    """A request over the size limit is a 413 with the form, even before its token is read."""
    client = make_app(MAX_UPLOAD_MB=0.0625, WTF_CSRF_ENABLED=True).test_client()
    data = {"image": (io.BytesIO(b"0" * 400 * 1024), "big.png"), "strategy": "ab"}
    response = client.post("/predict", data=data)
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    assert "MB" in html and 'class="card upload"' in html


def test_samples_are_refused_clearly_without_the_data_set(client, monkeypatch):
    monkeypatch.setattr("views.samples.test_split", lambda: None)
    response = client.post("/bagging", data={"sample": "3"}, follow_redirects=True)
    assert response.status_code == 400
    assert "Sample images are not available on this server" in response.get_data(as_text=True)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_forms_need_a_csrf_token(make_app, upload):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    missing = client.post("/bagging", data={"image": upload()}, follow_redirects=True)
    assert missing.status_code == 400
    assert "The CSRF token is missing." in missing.get_data(as_text=True)
    token = csrf_token(client.get("/bagging").get_data(as_text=True))
    ok = client.post(
        "/bagging", data={"image": upload(), "csrf_token": token}, follow_redirects=True
    )
    assert ok.status_code == 200
    feedback_url = f"/predictions/{prediction_id(ok.get_data(as_text=True))}/feedback"
    assert client.post(feedback_url, data={"yes": "Yes", "label": "0"}).status_code == 400
    token = csrf_token(ok.get_data(as_text=True))
    done = client.post(feedback_url, data={"yes": "Yes", "label": "0", "csrf_token": token})
    assert done.status_code == 303


def test_feedback_form_records_and_confirms(app, client, upload):
    html = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    pid = prediction_id(html)
    response = client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes", "label": "0"})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Thanks! Recorded that the prediction was right." in page
    with app.app_context():
        stored = store.get_prediction(store.get_session(), pid)
        assert stored.feedback.correct is True
        wrong = (stored.class_index + 1) % 10
    data = {"no": "No", "label": str(wrong)}
    response = client.post(f"/predictions/{pid}/feedback", data=data, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "Your answer (the prediction was wrong: it was" in page
    assert "the first answer given for this prediction is the one that counts" in page
    with app.app_context():
        stored = store.get_prediction(store.get_session(), pid)
        assert stored.feedback.correct is True  # the first verdict stands
        history = store.feedback_history(store.get_session(), pid)
        assert [(e.correct, e.counted) for e in history] == [(True, True), (False, False)]


@pytest.mark.parametrize(
    ("data", "status"), [({"no": "No", "label": "42"}, 400), ({"label": "1"}, 400)]
)
def test_bad_feedback_form(client, upload, data, status):
    pid = prediction_id(
        client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
            as_text=True
        )
    )
    response = client.post(f"/predictions/{pid}/feedback", data=data)
    assert response.status_code == status
    assert 'role="alert"' in response.get_data(as_text=True)


def test_feedback_for_unknown_prediction_is_a_404_page(client):
    response = client.post(f"/predictions/{'0' * 32}/feedback", data={"yes": "Yes"})
    assert response.status_code == 404
    assert "No prediction with id" in response.get_data(as_text=True)


def test_browser_gets_a_sticky_ab_cookie(app, client, upload):
    client.get("/")
    cookie = client.get_cookie(CLIENT_COOKIE)
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert cookie.expires is not None
    arms = set()
    for _ in range(6):
        html = client.post("/ab", data={"image": upload()}, follow_redirects=True).get_data(
            as_text=True
        )
        arms.add(re.search(r"served by <strong>(\w+)</strong>", html).group(1))
    assert len(arms) == 1
    from experiments.assignment import hash_client_id
    from views.hooks import client_id_from_cookie

    with app.test_request_context():
        client_id = client_id_from_cookie(cookie.value)
        assert client_id is not None and client_id not in (cookie.value, "")
        rows = store.recent_predictions(store.get_session())
        assert {r.client_hash for r in rows} == {hash_client_id(client_id)}


def test_api_responses_set_no_cookie(client, upload):
    response = client.post("/api/v1/predict", data={"image": upload(), "strategy": "ab"})
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("get", "/no/such/page", 404, "There is no page at this address"),
        ("delete", "/bagging", 405, "DELETE is not allowed at /bagging"),
        ("get", "/predictions/" + "0" * 32, 404, "No prediction with id"),
        ("get", "/predictions/../../etc", 404, "There is no page"),
    ],
)
def test_error_pages_use_the_layout(client, method, path, status, message):
    response = getattr(client, method)(path)
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert message in html
    assert 'class="site-header"' in html and "Go to the home page" in html


UNKNOWN = "/predictions/" + "0" * 32
ERROR_PAGES = [
    # (status, config, method, path, form fields, code that raises, what the page tells to do)
    (
        400,
        {"WTF_CSRF_ENABLED": True},
        "post",
        UNKNOWN + "/feedback",
        {"yes": "Yes"},
        None,
        "Reload the page and submit the form again",
    ),
    (
        403,
        {"ADMIN_PASSWORD": None},
        "get",
        "/admin",
        None,
        None,
        "set ADMIN_PASSWORD and restart the service",
    ),
    (404, {}, "get", "/no/such/page", None, None, "start from the home page"),
    (
        413,
        {"MAX_UPLOAD_MB": 0.0625, "WTF_CSRF_ENABLED": True},
        "post",
        UNKNOWN + "/feedback",
        {"label": "x" * 200_000},
        None,
        "Choose a smaller image",
    ),
    (
        500,
        {},
        "get",
        UNKNOWN,
        None,
        RuntimeError("secret internals"),
        "Try again; if it keeps happening, tell the operator the request id",
    ),
    (
        503,
        {},
        "get",
        UNKNOWN,
        None,
        OperationalError("SELECT", {}, Exception("locked")),
        "Try again in a moment; if it keeps happening, tell the operator the request id",
    ),
]


@pytest.mark.parametrize(
    ("status", "config", "method", "path", "form", "failure", "advice"),
    ERROR_PAGES,
    ids=[str(case[0]) for case in ERROR_PAGES],
)
def test_each_error_page_is_in_the_layout_and_says_what_to_do(
    make_app, monkeypatch, status, config, method, path, form, failure, advice
):
    if failure is not None:

        def fail(*args, **kwargs):
            raise failure

        monkeypatch.setattr("store.get_prediction", fail)
    client = make_app(**config).test_client()
    response = getattr(client, method)(path, data=form)
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert 'class="site-header"' in html and "Go to the home page" in html
    assert f"Error {status}" in html
    assert advice in html
    assert "secret internals" not in html and "SELECT" not in html
    if status >= 500:
        assert response.headers["X-Request-ID"] in html


def test_500_page_names_the_request_id(app, client, upload, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["chorus"].prediction, "predict", explode)
    response = client.post("/bagging", data={"image": upload()}, follow_redirects=True)
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] in html and "boom" not in html


def selected_options(html: str) -> list[str]:
    """The label of each selected option of the feedback form's "True class" select."""
    select = re.search(r'<select[^>]*name="label".*?</select>', html, re.S).group(0)
    return re.findall(r"<option[^>]*\bselected\b[^>]*>([^<]*)</option>", select)


def test_feedback_select_starts_on_a_placeholder(app, client, upload, app_bundle):
    """Pressing "No, it was:" untouched must not name the predicted class."""
    result = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    sample = client.post(
        "/predict",
        data={"sample": str(gallery(app_bundle).samples[0].index), "strategy": "boosting"},
        follow_redirects=True,
    ).get_data(as_text=True)
    pid = prediction_id(result)
    stored = client.get(f"/predictions/{pid}").get_data(as_text=True)
    for html in (result, sample, stored):
        assert selected_options(html) == ["choose the true class"]
    client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes", "label": ""})
    right = client.get(f"/predictions/{pid}").get_data(as_text=True)
    assert selected_options(right) == ["choose the true class"]
    # A "No" verdict is shown on a prediction whose first verdict it is.
    other = prediction_id(
        client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
            as_text=True
        )
    )
    with app.app_context():
        predicted = store.get_prediction(store.get_session(), other).class_index
    wrong = (predicted + 1) % 10
    client.post(f"/predictions/{other}/feedback", data={"no": "No", "label": str(wrong)})
    changed = client.get(f"/predictions/{other}").get_data(as_text=True)
    assert selected_options(changed) == [app.config["BUNDLE"].classes[wrong]]
    # A later "No" on the first prediction is kept, but its page shows the counted "Yes".
    client.post(f"/predictions/{pid}/feedback", data={"no": "No", "label": str(wrong)})
    still = client.get(f"/predictions/{pid}").get_data(as_text=True)
    assert selected_options(still) == ["choose the true class"]


@pytest.mark.parametrize("label", ["predicted", "", None])
def test_no_without_another_class_is_refused_and_records_nothing(app, client, upload, label):
    pid = prediction_id(
        client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
            as_text=True
        )
    )
    with app.app_context():
        predicted = store.get_prediction(store.get_session(), pid).class_index
    data = {"no": "No, it was:"}
    if label is not None:
        data["label"] = str(predicted) if label == "predicted" else label
    response = client.post(f"/predictions/{pid}/feedback", data=data)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert re.search(r'role="alert">You said the prediction was wrong: choose the true class', html)
    assert selected_options(html) == ["choose the true class"]
    assert "Thanks!" not in html
    with app.app_context():
        assert store.get_prediction(store.get_session(), pid).feedback is None


# --- Post/Redirect/Get and the stored result page ------------------------------------------------


def stored_count(app) -> int:
    with app.app_context():
        return len(store.recent_predictions(store.get_session(), limit=1000))


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_redirects_to_its_stored_result_and_a_reload_stores_nothing(app, client, upload):
    response = client.post("/bagging", data={"image": upload()})
    assert response.status_code == 303
    location = response.headers["Location"]
    pid = re.fullmatch(r"/predictions/([0-9a-f]{32})", location).group(1)
    assert stored_count(app) == 1
    pages = [client.get(location).get_data(as_text=True) for _ in range(3)]  # reloads
    assert stored_count(app) == 1
    html = pages[-1]
    assert prediction_id(html) == pid
    assert 'alt="Your upload"' in html and 'alt="The 28×28 image the model saw"' in html
    assert "this browser sees its thumbnail for a few minutes" in html
    assert "Was this right?" in html and html.count('class="bar-row') == 3
    with app.app_context():
        row = store.get_prediction(store.get_session(), pid)
    assert row.canvas is not None and len(row.canvas) == 28 * 28
    for member in row.members:
        assert f"<td><code>{member['name']}</code></td>" in html


def test_a_shared_link_is_read_only_and_shows_no_upload(app, client, upload):
    location = client.post("/boosting", data={"image": upload()}).headers["Location"]
    other = app.test_client()  # another browser: no session of the one that predicted
    html = other.get(location).get_data(as_text=True)
    assert "Was this right?" not in html and "/feedback" not in html
    assert 'alt="Your upload"' not in html
    assert 'alt="The 28×28 image the model saw"' in html  # the canvas is in the store
    assert "Uploads are never stored or shown to others" in html
    assert html.count('class="bar-row') == 3
    assert 'href="/boosting">Classify another image' in html  # the strategy's own page
    client.post(location + "/feedback", data={"yes": "Yes"})
    shared = other.get(location).get_data(as_text=True)
    assert "The true class was recorded as" in shared and "Was this right?" not in shared


def test_the_page_says_when_the_thumbnail_is_gone(app, client, upload):
    now = [0.0]
    app.extensions[THUMBNAILS] = RecentThumbnails(size=4, ttl=60, clock=lambda: now[0])
    location = client.post("/bagging", data={"image": upload()}).headers["Location"]
    assert 'alt="Your upload"' in client.get(location).get_data(as_text=True)
    now[0] = 61.0
    html = client.get(location).get_data(as_text=True)
    assert 'alt="Your upload"' not in html
    assert "this upload's short-lived thumbnail is gone" in html
    assert 'alt="The 28×28 image the model saw"' in html


def test_recent_thumbnails_are_bounded_and_expire():
    now = [0.0]
    cache = RecentThumbnails(size=2, ttl=10, clock=lambda: now[0])
    cache.put("a", "data:a")
    cache.put("b", "data:b")
    cache.put("skip", None)  # an upload that cannot be shown keeps nothing
    cache.put("c", "data:c")  # the oldest goes
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (
        None,
        "data:b",
        "data:c",
        2,
    )
    now[0] = 10.0
    assert cache.get("b") is None and cache.get("c") is None and len(cache) == 0


@pytest.mark.parametrize(("path", "back"), [("/stacking", "/stacking"), ("/predict", "/")])
def test_classify_another_image_goes_back_where_the_upload_came_from(client, upload, path, back):
    html = client.post(
        path, data={"image": upload(), "strategy": "boosting"}, follow_redirects=True
    ).get_data(as_text=True)
    assert f'<a href="{back}">Classify another image</a>' in html


def test_the_top_classes_come_first_and_all_ten_are_a_click_away(app, client, upload):
    html = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    values = re.findall(r'<rect class="bar-fill" width="([\d.]+)"', html)
    assert len(values) == 3 and [float(v) for v in values] == sorted(map(float, values))[::-1]
    details = re.search(r'<details class="all-classes">.*?</details>', html, re.S).group(0)
    assert "<summary>All 10 classes</summary>" in details
    names = re.findall(r"<tr(?: class=\"agrees\")?><td>([^<]+)</td>", details)
    assert sorted(names) == sorted(app.config["BUNDLE"].classes)


def test_feedback_confirms_once_inside_its_card(client, upload):
    location = client.post("/bagging", data={"image": upload()}).headers["Location"]
    response = client.post(location + "/feedback", data={"yes": "Yes"})
    assert response.status_code == 303 and response.headers["Location"] == location
    html = client.get(location).get_data(as_text=True)
    assert html.count("Thanks! Recorded that the prediction was right.") == 1
    assert "Recorded: the true class is" not in html  # one confirmation, not two
    card = re.search(r'<section class="card feedback-card".*?</section>', html, re.S).group(0)
    assert 'id="feedback-status" tabindex="-1" role="status">Thanks!' in card
    assert 'alt="The 28×28 image the model saw"' in html  # the page stays the same page
    later = client.get(location).get_data(as_text=True)  # the flash is gone; the verdict is not
    assert "Thanks!" not in later and "Recorded: the true class is" in later


def test_the_no_button_follows_the_class_select_in_tab_order(client, upload):
    html = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    form = re.search(r'<form class="feedback".*?</form>', html, re.S).group(0)
    order = [m.group(0) for m in re.finditer(r'name="(yes|label|no)"', form)]
    assert order == ['name="yes"', 'name="label"', 'name="no"']
    assert re.search(r'<label for="(feedback-label-[0-9a-f]{32})">No, it was:</label>', form)


# --- the strategy survives a 413; honest messages and numbers -------------------------------------


def test_a_413_over_the_request_limit_keeps_the_chosen_strategy(make_app):
    client = make_app(MAX_UPLOAD_MB=0.0625, WTF_CSRF_ENABLED=True).test_client()
    data = {"strategy": "stacking", "image": (io.BytesIO(b"0" * 400 * 1024), "big.png")}
    response = client.post("/predict", data=data)
    assert response.status_code == 413
    html = response.get_data(as_text=True)
    checked = re.findall(
        r'<input checked[^>]*value="(\w+)"|<input[^>]*value="(\w+)"[^>]*checked', html
    )
    assert [a or b for a, b in checked] == ["stacking"]


def test_leading_fields_reads_only_complete_text_fields_before_the_file():
    from werkzeug.test import EnvironBuilder

    def environ(data):
        return EnvironBuilder(method="POST", data=data).get_environ()

    def big():
        return io.BytesIO(b"x" * 100_000), "a.png"

    assert leading_fields(environ({"csrf_token": "t", "strategy": "ab", "image": big()})) == {
        "csrf_token": "t",
        "strategy": "ab",
    }
    assert leading_fields(environ({"strategy": "ab"})) == {}  # not multipart
    cut = environ({"strategy": "ab" * 50, "image": big()})
    cut["wsgi.input"] = io.BytesIO(cut["wsgi.input"].read(60))  # the body ends mid-field
    assert leading_fields(cut) == {}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((64, 64), 200, np.uint8), "The image is blank (a single flat colour)"),
        (
            np.clip(np.random.default_rng(0).normal(128, 20, (256, 256)), 0, 255).astype(np.uint8),
            "The image looks like random noise",
        ),
    ],
    ids=["flat", "noise"],
)
def test_a_featureless_image_says_what_is_wrong(client, image, message):
    response = client.post("/boosting", data={"image": (io.BytesIO(png_of(image)), "x.png")})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html and 'class="card upload"' in html
    if "noise" in message:
        assert "blank" not in html


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "> 99.9%"), (0.99951, "> 99.9%"), (0.9994, "99.9%"), (0.5, "50.0%"), (None, "—")],
)
def test_a_probability_is_never_rounded_up_to_certainty(value, text):
    assert prob(value) == text


def test_a_saturated_answer_reads_above_99_9_not_100(client, upload, app_bundle, monkeypatch):
    ensemble = app_bundle.ensembles["bagging"]
    real_predict = ensemble.predict

    def certain(x):
        result = real_predict(x)
        probabilities = np.zeros_like(result.probabilities)
        probabilities[:, 3] = 1.0
        members = np.zeros_like(result.member_probabilities)
        members[:, :, 3] = 1.0
        return dataclasses.replace(
            result, probabilities=probabilities, member_probabilities=members
        )

    monkeypatch.setattr(ensemble, "predict", certain)
    html = client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
        as_text=True
    )
    assert "100.0%" not in html
    assert "&gt; 99.9% confident" in html
    assert html.count('<td class="num">&gt; 99.9%</td>') >= len(ensemble.member_names_)


def test_a_result_page_survives_a_definitions_refresh_while_it_renders(app, client, upload):
    """The engine re-reads the definitions when its snapshot is older than ``ttl``, in the
    middle of a page that has already loaded its prediction: that read has a session of its
    own, so the page's prediction (and its verdict) is not expired under it (it was: a 500,
    ``'Prediction.feedback' is not available due to lazy='raise'``, once a second in CI)."""
    pid = prediction_id(
        client.post("/bagging", data={"image": upload()}, follow_redirects=True).get_data(
            as_text=True
        )
    )
    client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes", "label": ""})
    engine = app.extensions["chorus"].engine
    engine.ttl = 0.0  # every snapshot() reads the definitions again
    try:
        for _ in range(3):
            response = client.get(f"/predictions/{pid}")
            html = response.get_data(as_text=True)
            assert response.status_code == 200, html[:300]
            assert pid in html and 'id="feedback-status"' in html  # the verdict, read from it
    finally:
        engine.ttl = 1.0


def test_the_navigation_without_its_catalogue_still_renders_and_says_why(
    app, client, monkeypatch, caplog
) -> None:
    """An error page renders its header even when the catalogue cannot be read (the store
    down), and the reason is logged rather than swallowed."""

    def down() -> None:
        raise RuntimeError("catalogue unavailable")

    monkeypatch.setattr(app.extensions["chorus"], "catalogue", down)
    caplog.set_level(logging.WARNING, logger="views.templating")
    page = client.get("/no-such-page")
    assert page.status_code == 404 and b'href="/admin"' in page.data
    assert "navigation without strategy pages: catalogue unavailable" in caplog.text
