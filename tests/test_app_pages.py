"""The server-rendered site: upload pages, results, samples, feedback forms, CSRF, errors."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
from sqlalchemy.exc import OperationalError

import store
from ensembles.stacking import MetaModel
from views.hooks import CLIENT_COOKIE
from views.samples import gallery

PAGES = ["bagging", "boosting", "stacking", "ab"]


def prediction_id(html: str) -> str:
    return re.search(r"predictions/([0-9a-f]{32})/feedback", html).group(1)


@pytest.mark.parametrize("path", ["/", "/bagging", "/boosting", "/stacking", "/ab"])
def test_upload_pages_render(client, path):
    response = client.get(path)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html
    assert html.count('name="sample"') == len(gallery()) == 12
    assert "image-rendering" not in html  # pixelated look comes from the stylesheet
    assert "<script" not in html


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
    response = client.post(f"/{strategy}", data={"image": upload()})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.count('class="bar-row') == len(app_bundle.classes)
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
    html = client.post("/predict", data={"image": upload(), "strategy": "boosting"}).get_data(
        as_text=True
    )
    assert "Boosting combined its" in html


def test_sample_button_classifies_a_known_test_image(client, app_bundle):
    sample = gallery()[0]
    response = client.post("/predict", data={"sample": str(sample.index), "strategy": "stacking"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"This test image is labelled\n      <strong>{sample.label}</strong>" in html


def test_stacking_shows_the_fallback(client, upload, monkeypatch, admin_headers):
    def broken(self, member_probs):
        raise FloatingPointError("meta-model exploded")

    monkeypatch.setattr(MetaModel, "predict_proba", broken)
    html = client.post("/stacking", data={"image": upload()}).get_data(as_text=True)
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
    html = client.post("/bagging", data={"image": upload()}).get_data(as_text=True)
    assert "Members dropped from this answer" in html and "bagging-99" in html


def test_no_members_left_rerenders_the_form_with_503(client, upload, break_ensemble):
    message = break_ensemble("bagging")
    response = client.post("/bagging", data={"image": upload()})
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
    response = client.post("/bagging", data={"sample": "3"})
    assert response.status_code == 400
    assert "Sample images are not available on this server" in response.get_data(as_text=True)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_forms_need_a_csrf_token(make_app, upload):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    missing = client.post("/bagging", data={"image": upload()})
    assert missing.status_code == 400
    assert "The CSRF token is missing." in missing.get_data(as_text=True)
    token = csrf_token(client.get("/bagging").get_data(as_text=True))
    ok = client.post("/bagging", data={"image": upload(), "csrf_token": token})
    assert ok.status_code == 200
    feedback_url = f"/predictions/{prediction_id(ok.get_data(as_text=True))}/feedback"
    assert client.post(feedback_url, data={"yes": "Yes", "label": "0"}).status_code == 400
    token = csrf_token(ok.get_data(as_text=True))
    done = client.post(feedback_url, data={"yes": "Yes", "label": "0", "csrf_token": token})
    assert done.status_code == 302


def test_feedback_form_records_and_confirms(app, client, upload):
    html = client.post("/bagging", data={"image": upload()}).get_data(as_text=True)
    pid = prediction_id(html)
    response = client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes", "label": "0"})
    assert response.status_code == 302
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
    pid = prediction_id(client.post("/bagging", data={"image": upload()}).get_data(as_text=True))
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
        html = client.post("/ab", data={"image": upload()}).get_data(as_text=True)
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
    response = client.post("/bagging", data={"image": upload()})
    assert response.status_code == 500
    html = response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] in html and "boom" not in html


def test_prediction_page_shows_stored_result(client, upload):
    html = client.post("/stacking", data={"image": upload()}).get_data(as_text=True)
    page = client.get(f"/predictions/{prediction_id(html)}")
    assert page.status_code == 200
    assert "Uploaded images are never stored" in page.get_data(as_text=True)


def selected_options(html: str) -> list[str]:
    """The label of each selected option of the feedback form's "True class" select."""
    select = re.search(r'<select[^>]*name="label".*?</select>', html, re.S).group(0)
    return re.findall(r"<option[^>]*\bselected\b[^>]*>([^<]*)</option>", select)


def test_feedback_select_starts_on_a_placeholder(app, client, upload):
    """Pressing "No, it was:" untouched must not name the predicted class."""
    result = client.post("/bagging", data={"image": upload()}).get_data(as_text=True)
    sample = client.post(
        "/predict", data={"sample": str(gallery()[0].index), "strategy": "boosting"}
    ).get_data(as_text=True)
    pid = prediction_id(result)
    stored = client.get(f"/predictions/{pid}").get_data(as_text=True)
    for html in (result, sample, stored):
        assert selected_options(html) == ["choose the true class"]
    client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes", "label": ""})
    right = client.get(f"/predictions/{pid}").get_data(as_text=True)
    assert selected_options(right) == ["choose the true class"]
    # A "No" verdict is shown on a prediction whose first verdict it is.
    other = prediction_id(client.post("/bagging", data={"image": upload()}).get_data(as_text=True))
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
    pid = prediction_id(client.post("/bagging", data={"image": upload()}).get_data(as_text=True))
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
