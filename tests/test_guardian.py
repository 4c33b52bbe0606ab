"""The guardian in the running app: guardrails roll back, canaries promote, roll back and ramp,
and a bandit moves traffic to the better arm — all from recorded outcomes and feedback alone."""

from __future__ import annotations

import io
import logging
from collections import Counter

import pytest

#: The store is part of what is tested here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.postgres
URL = "/api/v1/inference/ensemble"


@pytest.fixture
def app(make_app):
    # Evaluate on every outcome and re-read definitions at once: the test drives the clock.
    return make_app(DECISION_INTERVAL=0.0, DEFINITIONS_TTL=0.0)


@pytest.fixture
def api(client, admin_headers):
    def call(method, path, json=None):
        return client.open(path, method=method, json=json, headers=admin_headers)

    return call


def predict(client, image_png, strategy, client_id=None):
    data = {"image": (io.BytesIO(image_png), "x.png"), "strategy": strategy}
    if client_id is not None:
        data["client_id"] = client_id
    response = client.post("/api/v1/predict", data=data)
    response.close()
    return response


def label_for(body, correct):
    """The true label that makes ``body``'s answer right or wrong."""
    if correct:
        return body["label"]
    return next(c for c in body["probabilities"] if c != body["label"])


def feedback(client, body, correct):
    response = client.post(
        f"/api/v1/predictions/{body['prediction_id']}/feedback",
        json={"label": label_for(body, correct)},
    )
    assert response.status_code == 200, response.get_json()


def status_of(api, name):
    return api("GET", f"/api/v1/experiments/{name}").get_json()


def test_an_error_rate_guardrail_rolls_back_to_the_control_by_itself(
    api, client, image_png, break_ensemble, caplog
):
    body = {
        "name": "risky",
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        "control": "bagging",
        "guardrails": {"error_rate": 0.05},
    }
    assert api("POST", URL, body).status_code == 201
    break_ensemble("boosting")
    caplog.set_level(logging.WARNING, logger="serving.guardian")
    statuses = Counter()
    for i in range(400):
        statuses[predict(client, image_png, "risky", f"client-{i}").status_code] += 1
        if status_of(api, "risky")["status"] == "rolled_back":
            break
    described = status_of(api, "risky")
    assert described["status"] == "rolled_back", statuses
    decision = described["decision"]
    assert decision["status"] == "rolled_back" and decision["model"] == "bagging"
    assert decision["by"] == "guardian"
    assert decision["reason"].startswith("guardrail breached: boosting error rate")
    (check,) = decision["evidence"]["checks"]
    assert check["metric"] == "error_rate" and check["bound"] > 0.05 and check["breached"]
    assert statuses[503] >= 1  # it rolled back on evidence, after failures were recorded
    assert any("rolled back by its guardrails" in r.getMessage() for r in caplog.records)
    events = api("GET", "/api/v1/experiments/risky/results").get_json()["events"]
    assert events[0]["kind"] == "rolled_back" and events[0]["actor"] == "guardian"
    # From now on every request, whoever sends it, is served by the control.
    arms = {predict(client, image_png, "risky", f"later-{i}").get_json()["arm"] for i in range(30)}
    assert arms == {"bagging"}
    report = api("GET", "/api/v1/experiments/risky/report")
    assert report.status_code == 200
    assert report.get_json()["decision"]["by"] == "guardian"


def canary_body(name, **extra):
    return {
        "name": name,
        "strategy": "canary",
        "models": [{"model_id": "bagging"}, {"model_id": "boosting"}],
        "baseline_model": "bagging",
        "canary_model": "boosting",
        "canary_percentage": 50,
        "promotion_criteria": {"min_samples": 60, "min_improvement": 0.05},
        **extra,
    }


def drive(api, client, image_png, name, right, limit=600):
    """Send anonymous requests, label them (``right[arm]``: is that arm's answer correct),
    and stop once the experiment is decided; returns the arms served while it ran."""
    served = Counter()
    for i in range(limit):
        body = predict(client, image_png, name).get_json()
        served[body["arm"]] += 1
        feedback(client, body, right[body["arm"]](i))
        if status_of(api, name)["status"] != "running":
            break
    return served


def test_a_better_canary_is_promoted_by_its_criteria(api, client, image_png):
    assert api("POST", URL, canary_body("better")).status_code == 201
    drive(
        api,
        client,
        image_png,
        "better",
        {"bagging": lambda i: i % 2 == 0, "boosting": lambda i: i % 10 != 0},
    )
    described = status_of(api, "better")
    assert described["status"] == "completed"
    decision = described["decision"]
    assert decision["status"] == "promoted" and decision["model"] == "boosting"
    assert decision["evidence"]["canary_labelled"] >= 60
    assert decision["evidence"]["sequential_ci_low"] > 0
    arms = {predict(client, image_png, "better").get_json()["arm"] for _ in range(20)}
    assert arms == {"boosting"}


def test_a_worse_canary_is_rolled_back(api, client, image_png):
    assert api("POST", URL, canary_body("worse")).status_code == 201
    drive(
        api,
        client,
        image_png,
        "worse",
        {"bagging": lambda i: i % 10 != 0, "boosting": lambda i: i % 3 == 0},
    )
    described = status_of(api, "worse")
    assert described["status"] == "rolled_back"
    assert described["decision"]["model"] == "bagging"
    assert described["decision"]["evidence"]["sequential_ci_high"] < 0
    assert "worse than bagging" in described["decision"]["reason"]


def test_the_canary_ramps_up_while_it_is_not_losing(api, client, image_png):
    body = canary_body(
        "ramp",
        canary_percentage=10,
        step_percentage=20,
        max_percentage=50,
        promotion_criteria={"min_samples": 90, "min_improvement": 0.5},
    )
    assert api("POST", URL, body).status_code == 201
    drive(
        api,
        client,
        image_png,
        "ramp",
        {"bagging": lambda i: i % 2 == 0, "boosting": lambda i: i % 2 == 0},
        limit=700,
    )
    described = status_of(api, "ramp")
    assert described["canary_percentage"] == 50
    assert described["initial_canary_percentage"] == 10
    events = api("GET", "/api/v1/experiments/ramp/results").get_json()["events"]
    steps = [e for e in events if e["kind"] == "canary_stepped"]
    assert len(steps) == 2 and all(e["actor"] == "guardian" for e in steps)


def test_a_bandit_shifts_traffic_to_the_arm_that_earns_rewards(api, client, image_png):
    body = {
        "name": "bandit",
        "strategy": "bandit",
        "models": [{"model_id": "bagging"}, {"model_id": "boosting"}],
        "bandit_exploration_rate": 0.1,
    }
    assert api("POST", URL, body).status_code == 201
    right = {"bagging": lambda i: i % 5 == 0, "boosting": lambda i: i % 5 != 0}
    for i in range(120):
        answer = predict(client, image_png, "bandit").get_json()
        feedback(client, answer, right[answer["arm"]](i))
    later = Counter(predict(client, image_png, "bandit").get_json()["arm"] for _ in range(200))
    assert later["boosting"] / 200 > 0.8, later


def test_a_decision_taken_while_the_guardian_evaluates_is_never_overwritten(app, api, monkeypatch):
    # Another worker rolls the experiment back between the guardian's read of the row and its
    # own decision on the numbers it read: the guardian's decision must lose the revision check
    # (the row it judged is gone), not be applied on top as a second rollback.
    import serving.guardian as guardian_module
    from experiments.decisions import ArmInputs
    from experiments.stats import RatioStats
    from views.context import services

    body = {
        "name": "raced",
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        "control": "bagging",
        "guardrails": {"error_rate": 0.05},
    }
    assert api("POST", URL, body).status_code == 201

    def breached_after_a_rival_decides(session, name, definition):
        rival = api("POST", f"/api/v1/experiments/{name}/rollback", {"reason": "by hand"})
        assert rival.status_code == 200, rival.get_json()
        failing = ArmInputs(served=500, errors=500, accuracy=RatioStats.proportion(0, 0))
        return {"bagging": ArmInputs(served=500), "boosting": failing}

    monkeypatch.setattr(guardian_module, "routed_inputs", breached_after_a_rival_decides)
    with app.app_context():
        assert services().guardian.check("raced") is None
    described = status_of(api, "raced")
    assert described["decision"]["by"] != "guardian", described["decision"]
    assert described["decision"]["reason"] == "by hand"
    events = api("GET", "/api/v1/experiments/raced/results").get_json()["events"]
    assert [e["kind"] for e in events].count("rolled_back") == 1, events


def test_a_rival_decision_during_the_report_build_makes_the_second_one_a_conflict(app, api):
    # decide() freezes a report before it writes, and building it ends the transaction: a
    # rival decision committed meanwhile must make this one a conflict (the multi-worker run
    # once recorded two rollbacks because the revision was re-read after the report).
    import store
    from serving.errors import Conflict
    from views.context import services

    body = {
        "name": "twice",
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        "control": "bagging",
    }
    assert api("POST", URL, body).status_code == 201
    with app.app_context():
        definitions = services().definitions
        build_report = definitions.results

        def report_while_a_rival_decides(name):
            report = build_report(name)
            other = store.open_store(app.config["DATABASE_URL"])  # another worker's store
            try:
                rival = other.sessions()
                row = store.get_experiment(rival, name)
                store.update_experiment(
                    rival,
                    name,
                    actor="rival",
                    kind="rolled_back",
                    expected_revision=row.revision,
                    status="rolled_back",
                )
                rival.close()
            finally:
                other.close()  # its pooled connection, else closed by the GC mid-next-test
            return report

        definitions.results = report_while_a_rival_decides
        try:
            with pytest.raises(Conflict):
                definitions.decide("twice", "rollback", "guardian", revision=None)
        finally:
            definitions.results = build_report
    events = api("GET", "/api/v1/experiments/twice/results").get_json()["events"]
    assert [e["actor"] for e in events if e["kind"] == "rolled_back"] == ["rival"], events
