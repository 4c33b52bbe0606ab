"""``GET /metrics`` in one process (the app's own registry), multiprocess mode in subprocesses,
the metrics folder gunicorn.conf.py makes, and the shipped Prometheus config and Grafana board."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: The router spec's metrics and the on-call ones: name -> (type, label names).
EXPECTED = {
    "ensemble_routing_decisions": ("counter", {"experiment", "strategy", "model"}),
    "ensemble_model_latency_ms": ("histogram", {"model"}),
    "ensemble_model_accuracy": ("gauge", {"model"}),
    "ensemble_canary_progress": ("gauge", {"experiment"}),
    "ensemble_predictions": ("counter", {"strategy", "status"}),
    "ensemble_prediction_errors": ("counter", {"strategy", "error"}),
    "ensemble_fallbacks": ("counter", {"model", "reason"}),
    "ensemble_dropped_members": ("counter", {"model", "member"}),
    "ensemble_member_agreement_ratio": ("histogram", {"model"}),
    "ensemble_guardrail_breaches": ("counter", {"experiment", "arm", "metric"}),
    "ensemble_rollbacks": ("counter", {"experiment", "reason"}),
    "ensemble_experiment_decisions": ("counter", {"experiment", "action"}),
    "ensemble_drift_p_value": ("gauge", {"model", "feature"}),
    "ensemble_drift_detected": ("gauge", set()),
    "ensemble_http_request_duration_seconds": ("histogram", {"endpoint", "method", "status"}),
    "ensemble_model_version_info": ("gauge", {"version"}),
}


def scrape(client, headers=None):
    """{family name: family} of one /metrics answer, parsed by prometheus_client's own parser."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    return {family.name: family for family in text_string_to_metric_families(text)}, text


def value(families, name, **labels):
    """The sample ``name`` with exactly ``labels`` (0.0 when absent)."""
    family = families[re.sub(r"_(total|count|sum|bucket)$", "", name)]
    for sample in family.samples:
        if sample.name == name and sample.labels == labels:
            return sample.value
    return 0.0


def upload(image_png, strategy, **extra):
    return {"image": (io.BytesIO(image_png), "x.png"), "strategy": strategy, **extra}


def test_every_metric_is_exported_with_its_type_labels_and_help(client, image_png):
    assert client.post("/api/v1/predict", data=upload(image_png, "ab")).status_code == 200
    assert client.post("/api/v1/predict", data=upload(image_png, "bagging")).status_code == 200

    families, text = scrape(client)

    for name, (kind, labels) in EXPECTED.items():
        assert families[name].type == kind, name
        assert families[name].documentation, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert "milliseconds" in families["ensemble_model_latency_ms"].documentation
    assert "seconds" in families["ensemble_http_request_duration_seconds"].documentation
    (routed,) = families["ensemble_routing_decisions"].samples
    assert routed.labels["experiment"] == "ab" and routed.labels["strategy"] == "random"
    assert routed.labels["model"] in {"bagging", "boosting"} and routed.value == 1
    assert value(families, "ensemble_predictions_total", strategy="bagging", status="ok") == 1
    assert value(families, "ensemble_predictions_total", strategy="ab", status="ok") == 1
    assert value(families, "ensemble_model_latency_ms_count", model="bagging") >= 1
    assert value(families, "ensemble_model_version_info", version="fake-20260101-000000") == 1
    duration = "ensemble_http_request_duration_seconds_count"
    assert value(families, duration, endpoint="api.predict", method="POST", status="200") == 2
    assert "_created" not in text  # in-process text looks like the multiprocess one


def test_labels_stay_bounded_whatever_the_client_sends(client, image_png):
    junk = "x" * 30 + "-never-a-label"
    assert client.post("/api/v1/predict", data=upload(image_png, junk)).status_code == 400
    assert client.post("/api/v1/predict", data=upload(b"junk", "bagging")).status_code == 400
    cid = upload(image_png, "ab", client_id="client-never-a-label")
    assert client.post("/api/v1/predict", data=cid).status_code == 200
    assert client.get(f"/no/such/{junk}").status_code == 404
    assert client.open("/healthz", method="BREW").status_code == 405

    families, text = scrape(client)

    assert "never-a-label" not in text
    predictions = "ensemble_predictions_total"
    assert value(families, predictions, strategy="unknown", status="rejected") == 1
    assert value(families, predictions, strategy="bagging", status="rejected") == 1
    errors = "ensemble_prediction_errors_total"
    assert value(families, errors, strategy="unknown", error="InvalidRequest") == 1
    assert value(families, errors, strategy="bagging", error="NotAnImageError") == 1
    duration = "ensemble_http_request_duration_seconds_count"
    assert value(families, duration, endpoint="unmatched", method="GET", status="404") == 1
    assert value(families, duration, endpoint="unmatched", method="OTHER", status="405") == 1


def test_each_image_of_an_inference_protocol_batch_counts_as_a_prediction(client):
    pixels = [0] * (3 * 28 * 28)
    tensor = {"name": "image", "datatype": "UINT8", "shape": [3, 28, 28], "data": pixels}
    response = client.post("/v2/models/ab/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.get_json()

    families, _ = scrape(client)

    assert value(families, "ensemble_predictions_total", strategy="ab", status="ok") == 3
    routed = sum(s.value for s in families["ensemble_routing_decisions"].samples)
    assert routed == 3


def test_a_failed_inference_protocol_batch_counts_each_image(client, image_png, break_ensemble):
    """Without the fix a failed V2 batch left both error series at zero."""
    break_ensemble("bagging")
    pixels = {"name": "image", "datatype": "UINT8", "shape": [4, 28, 28], "data": [0] * 4 * 784}
    assert client.post("/v2/models/bagging/infer", json={"inputs": [pixels]}).status_code == 503
    files = [base64.b64encode(data).decode() for data in (image_png, b"junk", image_png)]
    tensor = {"name": "image", "datatype": "BYTES", "shape": [3], "data": files}
    assert client.post("/v2/models/boosting-1/infer", json={"inputs": [tensor]}).status_code == 400

    families, _ = scrape(client)

    predictions, errors = "ensemble_predictions_total", "ensemble_prediction_errors_total"
    assert value(families, predictions, strategy="bagging", status="unavailable") == 4
    assert value(families, errors, strategy="bagging", error="Unavailable") == 4
    assert value(families, predictions, strategy="boosting-1", status="rejected") == 3
    assert value(families, errors, strategy="boosting-1", error="NotAnImageError") == 3
    assert "once per image" in families["ensemble_predictions"].documentation


def test_dropped_members_fallbacks_and_failures_are_counted(
    client, image_png, app_bundle, break_ensemble
):
    app_bundle.bank.fail.add("bagging-0")
    assert client.post("/api/v1/predict", data=upload(image_png, "stacking")).status_code == 200
    assert client.post("/api/v1/predict", data=upload(image_png, "bagging")).status_code == 200
    break_ensemble("boosting")
    assert client.post("/api/v1/predict", data=upload(image_png, "boosting")).status_code == 503

    families, _ = scrape(client)

    fallbacks = "ensemble_fallbacks_total"
    assert value(families, fallbacks, model="stacking", reason="member_failed") == 1
    dropped = "ensemble_dropped_members_total"
    assert value(families, dropped, model="bagging", member="bagging-0") == 1
    assert value(families, dropped, model="stacking", member="bagging-0") == 1
    predictions = "ensemble_predictions_total"
    assert value(families, predictions, strategy="boosting", status="unavailable") == 1
    errors = "ensemble_prediction_errors_total"
    assert value(families, errors, strategy="boosting", error="Unavailable") == 1
    agreement = families["ensemble_member_agreement_ratio"].samples
    assert any(s.name.endswith("_count") and s.labels["model"] == "bagging" for s in agreement)


def test_accuracy_comes_from_feedback_and_canary_progress_from_the_experiment(
    client, image_png, admin_headers
):
    bodies = [
        client.post("/api/v1/predict", data=upload(image_png, "bagging")).get_json()
        for _ in range(4)
    ]
    for n, body in enumerate(bodies):  # three right, one wrong
        wrong = next(c for c in body["probabilities"] if c != body["label"])
        label = body["label"] if n < 3 else wrong
        url = f"/api/v1/predictions/{body['prediction_id']}/feedback"
        assert client.post(url, json={"label": label}).status_code == 200
    canary = {
        "name": "can",
        "strategy": "canary",
        "models": [{"model_id": "bagging"}, {"model_id": "boosting"}],
        "baseline_model": "bagging",
        "canary_model": "boosting",
        "canary_percentage": 20,
        "max_percentage": 80,
    }
    created = client.post("/api/v1/inference/ensemble", json=canary, headers=admin_headers)
    assert created.status_code == 201, created.get_json()

    families, _ = scrape(client)

    assert value(families, "ensemble_model_accuracy", model="bagging") == 0.75
    assert value(families, "ensemble_canary_progress", experiment="can") == 0.25


def test_a_guardrail_rollback_counts_the_breach_and_the_rollback(
    make_app, image_png, admin_headers, break_ensemble
):
    client = make_app(DECISION_INTERVAL=0.0, DEFINITIONS_TTL=0.0).test_client()
    body = {
        "name": "risky",
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 1}],
        "control": "bagging",
        "guardrails": {"error_rate": 0.05},
    }
    url = "/api/v1/inference/ensemble"
    assert client.post(url, json=body, headers=admin_headers).status_code == 201
    break_ensemble("boosting")

    def status():
        return client.get("/api/v1/experiments/risky", headers=admin_headers).get_json()["status"]

    for i in range(400):
        client.post("/api/v1/predict", data=upload(image_png, "risky", client_id=f"c-{i}")).close()
        if status() == "rolled_back":
            break

    families, _ = scrape(client)

    assert status() == "rolled_back"
    assert value(families, "ensemble_rollbacks_total", experiment="risky", reason="guardrail") == 1
    breaches = "ensemble_guardrail_breaches_total"
    assert value(families, breaches, experiment="risky", arm="boosting", metric="error_rate") == 1
    decisions = "ensemble_experiment_decisions_total"
    assert value(families, decisions, experiment="risky", action="rollback") == 1
    routed = "ensemble_routing_decisions_total"
    # Requests routed to the broken arm count as routing decisions although they failed.
    assert value(families, routed, experiment="risky", strategy="weighted", model="boosting") >= 1


def test_a_failure_to_record_is_logged_and_the_prediction_still_answers(
    app, client, image_png, caplog
):
    class Broken:
        def labels(self, *values):
            raise RuntimeError("metrics storage is gone")

    metrics = app.extensions["chorus"].metrics
    metrics.model_latency = Broken()
    metrics.http_duration = Broken()
    metrics.model_accuracy = Broken()
    caplog.set_level(logging.WARNING, logger="serving.metrics")

    response = client.post("/api/v1/predict", data=upload(image_png, "bagging"))
    url = f"/api/v1/predictions/{response.get_json()['prediction_id']}/feedback"
    assert client.post(url, json={"label": response.get_json()["label"]}).status_code == 200
    families, _ = scrape(client)

    assert response.status_code == 200 and response.get_json()["label"]
    failed = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert "metrics: recording served failed; carrying on" in failed
    assert "metrics: recording http_request failed; carrying on" in failed
    assert "metrics: recording refresh failed; carrying on" in failed
    # What did not fail was still recorded.
    assert value(families, "ensemble_predictions_total", strategy="bagging", status="ok") == 1


def test_metrics_token_requires_a_bearer_header(make_app):
    client = make_app(METRICS_TOKEN="scrape-me").test_client()

    refused = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    basic = client.get("/metrics", headers={"Authorization": "Basic scrape-me"})
    families, _ = scrape(client, {"Authorization": "Bearer scrape-me"})

    assert refused.status_code == wrong.status_code == basic.status_code == 401
    assert refused.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert "ensemble_routing_decisions" in families


def test_metrics_are_open_without_a_token_and_set_no_cookie(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"


def test_a_drift_check_sets_each_tests_p_value_and_the_alarm():
    metrics = Metrics()
    found = {
        "detected": True,
        "tests": [
            {"feature": "brightness", "p_value": 0.5},
            {"feature": "confidence[bagging]", "p_value": 1e-9},
            {"feature": "predicted_class[bagging]", "p_value": None},  # too few to run
        ],
    }

    metrics.drift_checked(found)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}

    p_values = {
        (s.labels["model"], s.labels["feature"]): s.value
        for s in families["ensemble_drift_p_value"].samples
    }
    assert p_values == {("inputs", "brightness"): 0.5, ("bagging", "confidence"): 1e-9}
    assert value(families, "ensemble_drift_detected") == 1


def test_an_unjudged_window_exports_no_p_values():
    """Below 100 predictions drift is not judged (detected null): its p-values are not series."""
    metrics = Metrics()
    metrics.drift_checked({"detected": None, "tests": [{"feature": "brightness", "p_value": 1e-9}]})
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    assert not families["ensemble_drift_p_value"].samples
    assert value(families, "ensemble_drift_detected") == 0


MULTIPROCESS = textwrap.dedent(
    """
    import json, os, sys
    from prometheus_client.parser import text_string_to_metric_families
    from serving.metrics import Metrics, mark_worker_dead

    metrics = Metrics()  # made before the fork, as in gunicorn's preloaded master
    body = {"latency_ms": 12.0, "label": "Bag", "members": [], "degraded": [], "fallback": None}
    pids = []
    for version in ("v-old", "v-new"):
        pid = os.fork()
        if pid == 0:
            metrics.served(strategy="bagging", model="bagging", version=version, body=body)
            os._exit(0)
        os.waitpid(pid, 0)
        pids.append(pid)
    files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    mark_worker_dead(pids[0])
    after = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    text = metrics.exposition()[0].decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text) for s in f.samples
    }
    print(json.dumps({"pids": pids, "files": files, "after": after, "samples": [
        [name, dict(labels), v] for (name, labels), v in samples.items()]}))
    """
)


def test_one_scrape_sums_every_worker_and_a_dead_workers_live_gauges_go(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    old, new = report["pids"]
    assert f"gauge_livemax_{old}.db" in report["files"]
    assert f"gauge_livemax_{old}.db" not in report["after"]  # marked dead
    assert f"counter_{old}.db" in report["after"]  # its counts stay
    samples = {(name, tuple(sorted(labels.items()))): v for name, labels, v in report["samples"]}
    ok = ("ensemble_predictions_total", (("status", "ok"), ("strategy", "bagging")))
    assert samples[ok] == 2  # both workers, one of them dead
    versions = {
        dict(labels)["version"]: v
        for (name, labels), v in samples.items()
        if name == "ensemble_model_version_info"
    }
    assert versions == {"v-new": 1}  # the dead worker's version left with it
    count = ("ensemble_model_latency_ms_count", (("model", "bagging"),))
    assert samples[count] == 2


CONFIG_DIR = textwrap.dedent(
    """
    import os, runpy
    runpy.run_path("gunicorn.conf.py")
    print(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    """
)


def test_each_server_start_gets_a_fresh_metrics_folder_and_dead_masters_are_swept(tmp_path):
    dead = tmp_path / "chorus-metrics-8000-999999999-abc"  # above any pid_max: never alive
    live = tmp_path / f"chorus-metrics-8001-{os.getpid()}-abc"
    dead.mkdir()
    live.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PORT": "8123", "METRICS_DIR": str(tmp_path)}
    folders = [
        subprocess.run(
            [sys.executable, "-c", CONFIG_DIR], cwd=ROOT, env=env, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert folders[0] != folders[1]  # two starts on one port never share (or wipe) a folder
    for folder in map(Path, folders):
        assert folder.parent == tmp_path
        assert folder.name.startswith("chorus-metrics-8123-")
    # Both masters have exited without on_exit (no gunicorn ran): the second swept the first's.
    assert not Path(folders[0]).exists() and Path(folders[1]).is_dir()
    assert not dead.exists() and live.is_dir()


def test_the_example_scrape_config_is_valid_and_scrapes_metrics():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "chorus"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    checked = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_queries() -> list[str]:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_the_dashboard_queries_only_metrics_the_app_exports():
    exported = Metrics().names()
    queries = dashboard_queries()
    used = {name for expr in queries for name in re.findall(r"\b(ensemble_[a-z_]+)\b", expr)}

    assert used and used <= exported, sorted(used - exported)
    for needed in (
        "ensemble_routing_decisions_total",
        "ensemble_model_latency_ms_bucket",
        "ensemble_model_accuracy",
        "ensemble_canary_progress",
        "ensemble_prediction_errors_total",
        "ensemble_rollbacks_total",
    ):
        assert needed in used, needed
    assert any("histogram_quantile(0.95" in expr for expr in queries)
