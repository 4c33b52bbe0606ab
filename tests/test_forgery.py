"""Results a client cannot forge (issue 9's security review): secret keyed assignment, signed
cookies, first-verdict rule with a history, per-client caps, private prediction ids, and the
JSON API's refusal of cross-site browser requests."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import pytest
from sqlalchemy import select

import store
from experiments.assignment import hash_client_id
from views.hooks import CLIENT_COOKIE, client_id_from_cookie, sign_client_id

URL = "/api/v1/inference/ensemble"
SPLIT = {
    "name": "split",
    "strategy": "weighted",
    "models": [{"model_id": "bagging", "weight": 0.5}, {"model_id": "boosting", "weight": 0.5}],
}


def predict(client, image_png, strategy="ab", **fields):
    data = {"image": (io.BytesIO(image_png), "x.png"), "strategy": strategy, **fields}
    response = client.post("/api/v1/predict", data=data)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def feedback(client, prediction_id, label, **kwargs):
    return client.post(
        f"/api/v1/predictions/{prediction_id}/feedback", json={"label": label}, **kwargs
    )


def history(app, prediction_id):
    with app.app_context():
        return [
            (e.true_class_index, e.correct, e.source, e.counted)
            for e in store.feedback_history(store.get_session(), prediction_id)
        ]


def old_public_arm(client_id: str) -> str:
    """The first release's assignment of ``ab`` at 0.5: sha256 with a namespace in the source."""
    digest = hashlib.sha256(("chorus-ab-v1:" + client_id).encode("utf-8")).digest()
    return "boosting" if (int.from_bytes(digest[:8], "big") >> 11) / 2**53 < 0.5 else "bagging"


# --- the reviewer's forgery ----------------------------------------------------------------------


def test_the_reviewers_80_request_forgery_no_longer_works(app, client, image_png, admin_headers):
    """80 requests from ids picked so the public formula sends them all to Boosting, each then
    labelled to make Boosting look perfect, and one verdict flipped 1 -> 0 -> 1."""
    chosen = [
        f"attacker-{i}" for i in range(10_000) if old_public_arm(f"attacker-{i}") == "boosting"
    ][:80]
    assert len(chosen) == 80
    served = [predict(client, image_png, "ab", client_id=i) for i in chosen]
    arms = [body["arm"] for body in served]
    # The attacker no longer picks the arm: the split is the coin's (80 * 0.5 ± 4 sigma).
    assert 22 <= arms.count("boosting") <= 58, arms.count("boosting")
    # Nor is the arm a function of the public sha256 namespace any more.
    agree = sum(arm == old_public_arm(i) for arm, i in zip(arms, chosen, strict=True))
    assert agree < 80

    for body in served:  # the forged labels: Boosting always right, Bagging always wrong
        label = body["class_index"] if body["arm"] == "boosting" else (body["class_index"] + 1) % 10
        assert feedback(client, body["prediction_id"], label).status_code == 200

    # A flipped verdict 1 -> 0 -> 1: the first stays effective, the history holds three rows.
    target = next(b for b in served if b["arm"] == "boosting")
    pid, right = target["prediction_id"], target["class_index"]
    wrong = feedback(client, pid, (right + 1) % 10).get_json()
    again = feedback(client, pid, right).get_json()
    assert wrong == {"correct": False, "counted": False}
    assert again == {"correct": True, "counted": False}
    assert history(app, pid) == [
        (right, True, "client", True),
        ((right + 1) % 10, False, "client", False),
        (right, True, "client", False),
    ]
    with app.app_context():
        effective = store.get_prediction(store.get_session(), pid).feedback
        assert (effective.true_class_index, effective.correct) == (right, True)
    results = client.get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    assert sum(arm["labelled"] for arm in results["arms"].values()) == 80


def test_one_client_counts_for_at_most_its_cap(make_app, image_png, admin_headers):
    app = make_app(CLIENT_LABEL_CAP=3)
    client = app.test_client()
    mine = [predict(client, image_png, "ab", client_id="one-customer") for _ in range(5)]
    answers = [feedback(client, b["prediction_id"], b["class_index"]).get_json() for b in mine]
    assert (
        answers
        == [{"correct": True, "counted": True}] * 3 + [{"correct": True, "counted": False}] * 2
    )
    with app.app_context():
        session = store.get_session()
        labelled = session.scalars(select(store.Feedback)).all()
        assert len(labelled) == 3  # no effective verdict beyond the cap
        capped = store.feedback_history(session, mine[4]["prediction_id"])
        assert [(e.counted, e.client_hash) for e in capped] == [
            (False, hash_client_id("one-customer"))
        ]
        assert "3 counted verdicts" in capped[0].note
    # Another client, and requests without any client id (each its own unit), are not capped.
    other = predict(client, image_png, "ab", client_id="another-customer")
    assert feedback(client, other["prediction_id"], 0).get_json()["counted"] is True
    anonymous = [predict(client, image_png, "ab") for _ in range(4)]
    assert all(feedback(client, b["prediction_id"], 1).get_json()["counted"] for b in anonymous)
    # The cap is per experiment: the same client starts afresh in another one.
    client.post(URL, json=SPLIT, headers=admin_headers)
    elsewhere = predict(client, image_png, "split", client_id="one-customer")
    assert feedback(client, elsewhere["prediction_id"], 2).get_json()["counted"] is True
    results = client.get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    assert sum(arm["labelled"] for arm in results["arms"].values()) == 3 + 1 + 4


def test_the_cap_holds_for_browser_verdicts_too(make_app, image_png):
    app = make_app(CLIENT_LABEL_CAP=1)
    client = app.test_client()
    pids = []
    for _ in range(2):
        html = client.post(
            "/ab", data={"image": (io.BytesIO(image_png), "x.png")}, follow_redirects=True
        ).get_data(as_text=True)
        pids.append(re.search(r"predictions/([0-9a-f]{32})/feedback", html).group(1))
    first = client.post(
        f"/predictions/{pids[0]}/feedback", data={"yes": "Yes"}, follow_redirects=True
    ).get_data(as_text=True)
    second = client.post(
        f"/predictions/{pids[1]}/feedback", data={"yes": "Yes"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "Thanks! Recorded that the prediction was right." in first
    assert "already given as many answers as count" in second
    assert [row[3] for row in history(app, pids[1])] == [False]


def test_history_per_prediction_is_capped_with_a_clear_429(app, client, image_png):
    body = predict(client, image_png, "bagging")
    pid = body["prediction_id"]
    for index in range(20):
        assert feedback(client, pid, index % 10).status_code == 200
    refused = feedback(client, pid, 3)
    assert refused.status_code == 429
    message = refused.get_json()["error"]
    assert "20 verdicts" in message and "first verdict stands" in message and "admin" in message
    assert len(history(app, pid)) == 20
    # The page's form says the same, with the same status.
    page = client.post(f"/predictions/{pid}/feedback", data={"yes": "Yes"})
    assert page.status_code == 429 and "20 verdicts" in page.get_data(as_text=True)


# --- admin corrections ---------------------------------------------------------------------------


def test_admin_correction_replaces_the_effective_verdict_and_is_recorded(
    app, client, image_png, admin_headers
):
    body = predict(client, image_png, "ab", client_id="someone")
    pid, answer = body["prediction_id"], body["class_index"]
    feedback(client, pid, answer)
    url = f"/api/v1/predictions/{pid}/feedback"
    wrong = (answer + 1) % 10
    corrected = client.put(
        url, json={"label": wrong, "reason": "checked the image"}, headers=admin_headers
    )
    assert corrected.status_code == 200
    out = corrected.get_json()
    assert out["prediction_id"] == pid and out["class_index"] == wrong
    assert out["correct"] is False and out["counted"] is True and out["corrected_by"] == "admin"
    with app.app_context():
        effective = store.get_prediction(store.get_session(), pid).feedback
        assert (effective.true_class_index, effective.correct) == (wrong, False)
        events = store.feedback_history(store.get_session(), pid)
        assert [(e.source, e.actor, e.note) for e in events] == [
            ("client", None, None),
            ("admin", "admin", "checked the image"),
        ]
    results = client.get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    assert results["arms"][body["arm"]]["correct"] == 0
    # A client's later verdict does not undo the correction.
    assert feedback(client, pid, answer).get_json() == {"correct": True, "counted": False}
    with app.app_context():
        assert store.get_prediction(store.get_session(), pid).feedback.correct is False


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        (None, {"label": 1}, 401, "admin"),
        ("admin", {"label": "Cat"}, 400, "class name"),
        ("admin", {}, 400, "label"),
        ("admin", {"label": 1, "reason": 5}, 400, "reason"),
        ("admin", [1], 400, "JSON object"),
    ],
)
def test_bad_corrections_are_clear_4xx(
    client, image_png, admin_headers, headers, body, status, message
):
    pid = predict(client, image_png, "bagging")["prediction_id"]
    response = client.put(
        f"/api/v1/predictions/{pid}/feedback", json=body, headers=admin_headers if headers else {}
    )
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_corrections_take_json_only_and_unknown_ids_are_404(client, image_png, admin_headers):
    pid = predict(client, image_png, "bagging")["prediction_id"]
    url = f"/api/v1/predictions/{pid}/feedback"
    form = client.put(url, data={"label": "1"}, headers=admin_headers)
    assert form.status_code == 415
    missing = client.put(
        f"/api/v1/predictions/{'0' * 32}/feedback", json={"label": 1}, headers=admin_headers
    )
    assert missing.status_code == 404 and "No prediction" in missing.get_json()["error"]


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def test_console_lists_corrections_and_conflicts_and_corrects_with_csrf(
    make_app, image_png, admin_headers
):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    body = predict(client, image_png, "ab", client_id="c-1")
    pid, answer = body["prediction_id"], body["class_index"]
    feedback(client, pid, answer)
    feedback(client, pid, (answer + 1) % 10)  # a conflicting, uncounted verdict
    page = client.get("/admin/feedback", headers=admin_headers)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Conflicting verdicts" in html and pid[:12] in html
    assert "No verdict has been corrected." in html
    assert 'href="/admin/feedback"' in client.get("/admin", headers=admin_headers).get_data(
        as_text=True
    )  # the admin navigation links the page

    form = {"prediction_id": pid, "label": str((answer + 2) % 10), "reason": "looked again"}
    refused = client.post("/admin/feedback", data=form, headers=admin_headers)
    assert refused.status_code == 400  # no CSRF token
    form["csrf_token"] = csrf_token(html)
    done = client.post("/admin/feedback", data=form, headers=admin_headers)
    assert done.status_code == 303
    shown = client.get(done.headers["Location"], headers=admin_headers).get_data(as_text=True)
    assert "Corrected prediction" in shown and "looked again" in shown
    assert "admin (admin)" in shown  # the history names who corrected
    with app.app_context():
        effective = store.get_prediction(store.get_session(), pid).feedback
        assert effective.true_class_index == (answer + 2) % 10

    bad = client.post(
        "/admin/feedback", headers=admin_headers, data={**form, "prediction_id": "nope"}
    )
    assert bad.status_code == 400 and "32 hexadecimal" in bad.get_data(as_text=True)
    unknown = client.post(
        "/admin/feedback", headers=admin_headers, data={**form, "prediction_id": "0" * 32}
    )
    assert unknown.status_code == 404 and "No prediction" in unknown.get_data(as_text=True)
    assert client.get("/admin/feedback").status_code == 401
    missing = client.get(f"/admin/feedback?prediction={'0' * 32}", headers=admin_headers)
    assert missing.status_code == 404 and "No prediction" in missing.get_data(as_text=True)


@pytest.mark.parametrize("cap", ["0", "2.5", "many", -1])
def test_client_label_cap_must_be_a_positive_whole_number(make_app, cap):
    from app import ConfigError

    with pytest.raises(ConfigError, match="CLIENT_LABEL_CAP"):
        make_app(CLIENT_LABEL_CAP=cap)


def test_client_label_cap_comes_from_the_environment(make_app, monkeypatch):
    monkeypatch.setenv("CLIENT_LABEL_CAP", "7")
    app = make_app()
    assert app.config["CLIENT_LABEL_CAP"] == 7
    assert app.extensions["chorus"].prediction.recorder.client_label_cap == 7


# --- the secret key never shows ------------------------------------------------------------------


def test_the_assignment_key_appears_in_no_answer_event_report_or_page(
    app, client, image_png, admin_headers, caplog
):
    caplog.set_level("DEBUG")
    created = client.post(URL, json=SPLIT, headers=admin_headers)
    assert created.status_code == 201
    for i in range(4):
        body = predict(client, image_png, "split", client_id=f"k{i}")
        feedback(client, body["prediction_id"], 0)
    client.patch(
        "/api/v1/experiments/split",
        json={"weights": {"bagging": 1, "boosting": 3}},
        headers=admin_headers,
    )
    with app.app_context():
        rows = store.list_definitions(store.get_session())[1]
        keys = {row.name: row.assignment_key for row in rows}
    assert set(keys) == {"ab", "split"} and all(len(k) == 32 for k in keys.values())
    assert keys["ab"] != keys["split"]
    answers = [
        created,
        client.get(f"{URL}/split", headers=admin_headers),
        client.get(URL, headers=admin_headers),
        client.get("/api/v1/experiments", headers=admin_headers),
        client.get("/api/v1/experiments/split", headers=admin_headers),
        client.get("/api/v1/experiments/split/results", headers=admin_headers),
        client.get("/api/v1/experiments/ab/results", headers=admin_headers),
        client.get("/admin", headers=admin_headers),
        client.get("/admin/experiments", headers=admin_headers),
        client.get("/admin/experiments/split", headers=admin_headers),
        client.get("/admin/feedback", headers=admin_headers),
    ]
    client.post("/api/v1/experiments/split/stop", json={}, headers=admin_headers)
    answers.append(client.get("/api/v1/experiments/split/report", headers=admin_headers))
    with app.app_context():
        events = store.experiment_events(store.get_session(), "split")
        stored_events = repr([(e.before, e.after, e.reason) for e in events])
        report = repr(store.get_experiment(store.get_session(), "split").report)
    texts = [r.get_data(as_text=True) for r in answers] + [stored_events, report, caplog.text]
    assert all(r.status_code in (200, 201) for r in answers), [r.status_code for r in answers]
    for key in keys.values():
        for encoded in (key.hex(), base64.b64encode(key).decode(), repr(key)):
            assert not any(encoded in text for text in texts)


# --- signed cookie -------------------------------------------------------------------------------


def test_a_forged_or_edited_cookie_does_not_set_the_client_id(app, client, image_png):
    chosen = "attacker-chosen-id-0001"
    for forged in (chosen, sign_client_id_in(app, chosen)[:-2] + "xx", chosen + ".bogus"):
        client.set_cookie(CLIENT_COOKIE, forged)
        response = client.post("/ab", data={"image": (io.BytesIO(image_png), "x.png")})
        assert response.status_code == 303  # to the stored result (Post/Redirect/Get)
        issued = client.get_cookie(CLIENT_COOKIE)
        assert issued is not None and issued.value != forged  # a fresh signed one replaces it
        with app.test_request_context():
            fresh = client_id_from_cookie(issued.value)
        assert fresh is not None and fresh != chosen
    with app.app_context():
        hashes = {r.client_hash for r in store.recent_predictions(store.get_session())}
    assert hash_client_id(chosen) not in hashes


def test_a_signed_cookie_keeps_its_client_and_arm(app, client, image_png):
    client.get("/")
    cookie = client.get_cookie(CLIENT_COOKIE).value
    with app.test_request_context():
        client_id = client_id_from_cookie(cookie)
    assert client_id and "." in cookie and client_id in cookie
    for _ in range(3):
        response = client.post("/ab", data={"image": (io.BytesIO(image_png), "x.png")})
        issued = response.headers.getlist("Set-Cookie")  # the session cookie may change
        assert not any(c.startswith(CLIENT_COOKIE + "=") for c in issued)  # not reissued
    with app.app_context():
        hashes = {r.client_hash for r in store.recent_predictions(store.get_session())}
    assert hashes == {hash_client_id(client_id)}


def test_a_cookie_signed_with_another_secret_is_refused(make_app, image_png):
    ours, theirs = make_app(SECRET_KEY="ours"), make_app(SECRET_KEY="theirs")
    with theirs.test_request_context():
        foreign = sign_client_id("someone-elses-client-id")
    with ours.test_request_context():
        assert client_id_from_cookie(foreign) is None
        assert client_id_from_cookie(sign_client_id("someone-elses-client-id"))


def sign_client_id_in(app, client_id: str) -> str:
    with app.test_request_context():
        return sign_client_id(client_id)


# --- prediction ids stay private -----------------------------------------------------------------


def test_no_page_or_endpoint_open_to_non_admins_lists_prediction_ids(app, client, image_png):
    """Every argument-free GET route, asked without credentials after some traffic, shows no
    prediction id; only ``/predictions/<id>`` shows its own (to whoever holds the id)."""
    pids = [predict(client, image_png, s)["prediction_id"] for s in ("ab", "bagging", "stacking")]
    other = app.test_client()  # another visitor, no credentials
    seen = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.arguments - set(rule.defaults or {}):
            continue
        path = rule.rule
        response = other.get(path)
        seen.append(path)
        text = response.get_data(as_text=True)
        assert not any(pid in text for pid in pids), path
    assert {"/", "/ab", "/bagging", "/admin", "/admin/feedback", "/api/v1/experiments"} <= set(seen)
    own = other.get(f"/predictions/{pids[0]}").get_data(as_text=True)
    assert pids[0] in own and pids[1] not in own


def test_prediction_ids_are_random_uuid4_hex(client, image_png):
    ids = {predict(client, image_png, "bagging")["prediction_id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", i) for i in ids)


# --- cross-site refusal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 200, None),
        ({"Sec-Fetch-Site": "same-origin"}, 200, None),
        ({"Sec-Fetch-Site": "none"}, 200, None),
        ({"Origin": "http://localhost"}, 200, None),
        ({"Origin": "http://localhost:80", "Sec-Fetch-Site": "same-origin"}, 200, None),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "another site"),
        ({"Sec-Fetch-Site": "same-site"}, 403, "another site"),
        ({"Origin": "https://evil.example"}, 403, "another origin"),
        ({"Origin": "https://localhost"}, 403, "another origin"),
        ({"Origin": "http://localhost:8080"}, 403, "another origin"),
        ({"Origin": "null"}, 403, "another origin"),
        ({"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"}, 403, "another site"),
    ],
)
def test_json_api_refuses_requests_a_browser_marks_cross_site(
    app, client, image_png, headers, status, reason
):
    pid = predict(client, image_png, "bagging")["prediction_id"]
    data = {"image": (io.BytesIO(image_png), "x.png"), "strategy": "bagging"}
    answers = [
        client.post("/api/v1/predict", data=data, headers=headers),
        feedback(client, pid, 0, headers=headers),
    ]
    for response in answers:
        assert response.status_code == status
        if reason:
            assert reason in response.get_json()["error"]
    if status == 403:
        assert history(app, pid) == []  # nothing was recorded
        assert client.get("/v2/health/live", headers=headers).status_code == 403


def test_pages_are_left_to_csrf_and_scripts_keep_working(client, image_png):
    """The refusal is the JSON API's; pages keep their CSRF protection and work cross-link."""
    page = client.get("/bagging", headers={"Sec-Fetch-Site": "cross-site"})
    assert page.status_code == 200
    assert predict(client, image_png, "bagging")["label"]  # no browser headers: a script
