"""``/v2`` (the Open Inference Protocol) through Flask's test client over the fake bank.

Every endpoint; JSON and binary tensors; batches in one forward; each image recorded and routed;
and every bad input a 4xx with ``{"error": ...}``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

import store
from ensembles.uncertainty import FEATURES, Abstainer
from experiments.assignment import hash_client_id
from models.preprocess import analyse, to_uint8_canvas
from models.tensor import to_tensor
from serving.inference_protocol import HEADER_LENGTH, MAX_BATCH
from tests.fakes import FAKE_VERSION, MEMBERS

BUILTINS = ("bagging", "boosting", "stacking", "cascade", "ab")
INFER = "/v2/models/{}/infer"


def canvases(n: int, seed: int = 0) -> np.ndarray:
    """``n`` different light-on-black 28x28 items."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(1, 8, size=2)
        out[i, top : top + 18, left : left + 12] = rng.integers(120, 255)
    return out


def png(canvas: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def uint8_json(pixels: np.ndarray, **extra) -> dict:
    tensor = {
        "name": "image",
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "data": pixels.reshape(-1).tolist(),
    }
    return {"inputs": [tensor], **extra}


def files_json(files: list[bytes]) -> dict:
    data = [base64.b64encode(f).decode() for f in files]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": data}]}


def binary_body(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request: JSON header, then the tensor bytes."""
    raw = json.dumps(header).encode()
    return raw + blob, {HEADER_LENGTH: str(len(raw)), "Content-Type": "application/octet-stream"}


def uint8_binary(pixels: np.ndarray, outputs_binary: bool = True) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "parameters": {"binary_data_size": pixels.size},
            }
        ],
        "parameters": {"binary_data_output": outputs_binary},
    }
    return binary_body(header, pixels.tobytes())


def bytes_elements(files: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(f)) + f for f in files)


def split_binary(response) -> tuple[dict, dict[str, np.ndarray | list[bytes]]]:
    """Parse a binary-extension response into its JSON header and output arrays."""
    length = int(response.headers[HEADER_LENGTH])
    header = json.loads(response.data[:length])
    offset, arrays = length, {}
    for output in header["outputs"]:
        if "data" in output:  # this output was asked for as JSON
            continue
        size = output["parameters"]["binary_data_size"]
        blob = response.data[offset : offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            items, at = [], 0
            while at < len(blob):
                (n,) = struct.unpack_from("<I", blob, at)
                items.append(blob[at + 4 : at + 4 + n])
                at += 4 + n
            arrays[output["name"]] = items
        else:
            dtype = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}[output["datatype"]]
            arrays[output["name"]] = np.frombuffer(blob, dtype=dtype).reshape(output["shape"])
    assert offset == len(response.data)
    return header, arrays


def outputs_of(body: dict) -> dict[str, list]:
    return {out["name"]: out["data"] for out in body["outputs"]}


def stats(client, admin_headers) -> dict:
    return client.get("/api/v1/stats", headers=admin_headers).get_json()


# -- metadata and health ------------------------------------------------------------------------
def test_server_metadata_and_health(client):
    meta = client.get("/v2")
    assert meta.status_code == 200
    assert meta.get_json() == {
        "name": "chorus",
        "version": meta.get_json()["version"],
        "extensions": ["binary_tensor_data"],
    }
    assert meta.get_json()["version"] not in ("", "unknown")
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_not_ready_without_a_model(make_app, tmp_path):
    client = make_app(BUNDLE=None, ARTIFACT_ROOT=tmp_path / "no-artifacts").test_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and "no model loaded" in ready.get_json()["error"]
    infer = client.post(INFER.format("bagging"), json=uint8_json(canvases(1)))
    assert infer.status_code == 503 and "No model is loaded" in infer.get_json()["error"]


def test_every_builtin_model_has_metadata_and_is_ready(client, subtests):
    for name in (*BUILTINS, *MEMBERS):
        with subtests.test(model=name):
            meta = client.get(f"/v2/models/{name}").get_json()
            kind = "experiment" if name == "ab" else "member" if name in MEMBERS else "ensemble"
            assert meta["name"] == name and meta["versions"] == [FAKE_VERSION]
            assert meta["parameters"]["kind"] == kind
            assert meta["platform"] == ("pytorch" if kind == "member" else f"chorus_{kind}")
            assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]
            assert meta["outputs"] == [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "class_index", "datatype": "INT64", "shape": [-1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "abstained", "datatype": "BOOL", "shape": [-1]},
                {"name": "uncertainty", "datatype": "FP32", "shape": [-1]},
            ]
            assert client.get(f"/v2/models/{name}/ready").get_json() == {
                "name": name,
                "ready": True,
            }
            versioned = client.get(f"/v2/models/{name}/versions/{FAKE_VERSION}")
            assert versioned.get_json() == meta


def test_created_ensembles_and_experiments_are_served(client, admin_headers):
    light = {
        "name": "light-vote",
        "strategy": "ensemble",
        "aggregation": "vote",
        "models": [{"model_id": "bagging-0"}, {"model_id": "boosting-1"}],
    }
    split = {
        "name": "member-split",
        "strategy": "round_robin",
        "models": [{"model_id": "light-vote"}, {"model_id": "bagging-2"}],
    }
    for body in (light, split):
        created = client.post("/api/v1/inference/ensemble", json=body, headers=admin_headers)
        assert created.status_code == 201, created.get_json()
    assert client.get("/v2/models/light-vote").get_json()["parameters"]["kind"] == "ensemble"
    assert client.get("/v2/models/member-split").get_json()["parameters"]["kind"] == "experiment"
    answer = client.post(INFER.format("member-split"), json=uint8_json(canvases(4))).get_json()
    assert answer["parameters"]["arms"] == ["light-vote", "bagging-2"] * 2  # a rotation


def test_a_version_that_is_not_active_is_404(client):
    for path in ("", "/ready"):
        missing = client.get(f"/v2/models/bagging/versions/v0{path}")
        assert missing.status_code == 404
        assert f"the active version is {FAKE_VERSION}" in missing.get_json()["error"]
    infer = client.post("/v2/models/bagging/versions/v0/infer", json=uint8_json(canvases(1)))
    assert infer.status_code == 404
    ok = client.post(
        f"/v2/models/bagging/versions/{FAKE_VERSION}/infer", json=uint8_json(canvases(1))
    )
    assert ok.status_code == 200 and ok.get_json()["model_version"] == FAKE_VERSION


def test_unknown_model_is_404_everywhere(client):
    for method, path in [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
    ]:
        answer = client.open(path, method=method, json=uint8_json(canvases(1)))
        assert answer.status_code == 404
        assert "Unknown model 'nope'" in answer.get_json()["error"]
        assert "bagging-0" in answer.get_json()["error"]


def test_a_broken_ensemble_is_not_ready(make_app):
    app = make_app(DEFINITIONS_TTL=3600.0)
    client = app.test_client()
    app.extensions["chorus"].engine.snapshot().broken["bagging"] = "ensemble bagging is broken"
    ready = client.get("/v2/models/bagging/ready")
    assert ready.status_code == 503 and "ensemble bagging is broken" in ready.get_json()["error"]
    infer = client.post(INFER.format("bagging"), json=uint8_json(canvases(1)))
    assert infer.status_code == 409 and "broken" in infer.get_json()["error"]


# -- inference ----------------------------------------------------------------------------------
def test_uint8_json_is_answered_in_one_forward_without_preprocessing(client, app_bundle):
    pixels = canvases(64)
    app_bundle.bank.calls.clear()
    answer = client.post(INFER.format("bagging"), json=uint8_json(pixels, id="req-1"))
    assert answer.status_code == 200 and answer.content_type == "application/json"
    body = answer.get_json()
    assert app_bundle.bank.calls == [(tuple(f"bagging-{i}" for i in range(5)), 64)]
    expected = app_bundle.ensembles["bagging"].predict(to_tensor(pixels))
    out = outputs_of(body)
    assert body["id"] == "req-1" and body["model_name"] == "bagging"
    probabilities = np.array(out["probabilities"]).reshape(64, 10)
    np.testing.assert_allclose(probabilities, expected.probabilities, rtol=0, atol=1e-6)
    assert out["class_index"] == expected.predictions.tolist()
    assert out["label"] == [app_bundle.classes[i] for i in expected.predictions]
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in body["outputs"]}
    assert shapes == {
        "probabilities": ("FP32", [64, 10]),
        "class_index": ("INT64", [64]),
        "label": ("BYTES", [64]),
        "abstained": ("BOOL", [64]),
        "uncertainty": ("FP32", [64]),
    }
    # The fake artifact has no fitted abstention: nothing abstains, nothing is scored.
    assert out["abstained"] == [False] * 64 and out["uncertainty"] == [None] * 64


def test_nested_json_data_is_accepted(client):
    pixels = canvases(2)
    body = uint8_json(pixels)
    body["inputs"][0]["data"] = pixels.tolist()
    flat = client.post(INFER.format("boosting"), json=uint8_json(pixels)).get_json()
    nested = client.post(INFER.format("boosting"), json=body).get_json()
    assert outputs_of(nested) == outputs_of(flat)


def test_files_get_the_same_answer_as_the_v1_api(client, upload):
    files = [png(c) for c in canvases(3, seed=4)]
    body = client.post(INFER.format("stacking"), json=files_json(files)).get_json()
    out = outputs_of(body)
    for i, data in enumerate(files):
        v1 = client.post(
            "/api/v1/predict", data={"image": upload(data), "strategy": "stacking"}
        ).get_json()
        np.testing.assert_allclose(
            out["probabilities"][i * 10 : (i + 1) * 10],
            list(v1["probabilities"].values()),
            rtol=0,
            atol=1e-6,
        )
        assert (out["class_index"][i], out["label"][i]) == (v1["class_index"], v1["label"])


def test_files_go_through_the_upload_preprocessing(client, app_bundle):
    """A dark item on white, 60x40: preprocessing inverts and frames it, as /api/v1 does."""
    photo = np.full((60, 40), 250, dtype=np.uint8)
    photo[10:50, 12:28] = 30
    data = png(photo)
    body = client.post(INFER.format("bagging-3"), json=files_json([data])).get_json()
    expected = (
        app_bundle.ensembles["bagging"]
        .bank.select(["bagging-3"])
        .probabilities(to_tensor(to_uint8_canvas(data)[None]))[0]
    )
    np.testing.assert_allclose(outputs_of(body)["probabilities"], expected[0], atol=1e-6)


def test_binary_tensors_in_and_out(client):
    pixels = canvases(5)
    raw, headers = uint8_binary(pixels)
    answer = client.post(INFER.format("cascade"), data=raw, headers=headers)
    assert answer.status_code == 200 and answer.content_type == "application/octet-stream"
    header, arrays = split_binary(answer)
    as_json = outputs_of(client.post(INFER.format("cascade"), json=uint8_json(pixels)).get_json())
    np.testing.assert_array_equal(
        arrays["probabilities"], np.array(as_json["probabilities"], dtype="<f4").reshape(5, 10)
    )
    assert arrays["class_index"].tolist() == as_json["class_index"]
    assert [x.decode() for x in arrays["label"]] == as_json["label"]
    assert len(header["parameters"]["prediction_ids"]) == 5


def test_binary_bytes_input(client):
    files = [png(c) for c in canvases(2, seed=9)]
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(bytes_elements(files))},
            }
        ]
    }
    raw, headers = binary_body(header, bytes_elements(files))
    binary = client.post(INFER.format("boosting"), data=raw, headers=headers)
    assert binary.status_code == 200 and binary.content_type == "application/json"
    as_json = client.post(INFER.format("boosting"), json=files_json(files)).get_json()
    assert outputs_of(binary.get_json()) == outputs_of(as_json)


def test_requested_outputs_and_binary_per_output(client):
    body = uint8_json(canvases(3))
    body["outputs"] = [
        {"name": "label"},
        {"name": "class_index", "parameters": {"binary_data": True}},
    ]
    answer = client.post(INFER.format("bagging"), json=body)
    header, arrays = split_binary(answer)
    assert [o["name"] for o in header["outputs"]] == ["label", "class_index"]
    assert len(header["outputs"][0]["data"]) == 3
    assert arrays["class_index"].dtype == np.int64 and arrays["class_index"].shape == (3,)
    only = uint8_json(canvases(1))
    only["outputs"] = [{"name": "probabilities"}]
    assert [o["name"] for o in client.post(INFER.format("bagging"), json=only).json["outputs"]] == [
        "probabilities"
    ]


def abstainer_on(bundle, threshold: float = 0.5) -> Abstainer:
    """Give the fake artifact a combiner (it has none) weighing how sure the answer is and how
    the input looks, as the fitted one does; returns it."""
    coef = np.zeros(len(FEATURES))
    for name, weight in (("confidence_logit", -0.4), ("entropy", 2.0), ("ink", 3.0)):
        coef[FEATURES.index(name)] = weight
    bundle.abstainer = Abstainer(
        np.zeros(len(FEATURES)), np.ones(len(FEATURES)), coef, -1.0, threshold
    )
    return bundle.abstainer


def test_a_batch_is_scored_for_abstention_like_single_predictions(app, client, app_bundle, upload):
    """Without the fix V2 answered no abstention and stored none: every row had null."""
    abstainer = abstainer_on(app_bundle)
    files = [png(c) for c in canvases(8, seed=11)]
    v1 = {
        name: [
            client.post("/api/v1/predict", data={"image": upload(f), "strategy": name}).get_json()
            for f in files
        ]
        for name in ("stacking", "bagging", "boosting")
    }
    want = [a["uncertainty"] for a in v1["stacking"]]
    scores = sorted(want)
    assert len(set(scores)) == len(files), scores  # the images differ in how unsure they are
    threshold = (scores[3] + scores[4]) / 2  # half of them abstain
    app_bundle.abstainer = dataclasses.replace(abstainer, threshold=threshold)

    as_json = client.post(INFER.format("stacking"), json=files_json(files)).get_json()
    out = outputs_of(as_json)
    np.testing.assert_allclose(out["uncertainty"], want, rtol=0, atol=1e-6)
    assert out["abstained"] == [u >= threshold for u in want]
    assert sum(out["abstained"]) == len(files) // 2
    raw, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(files)],
                    "parameters": {"binary_data_size": len(bytes_elements(files))},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        bytes_elements(files),
    )
    header, arrays = split_binary(client.post(INFER.format("stacking"), data=raw, headers=headers))
    assert (
        arrays["abstained"].dtype == np.bool_ and arrays["abstained"].tolist() == out["abstained"]
    )
    assert arrays["uncertainty"].dtype == np.float32
    np.testing.assert_allclose(arrays["uncertainty"], want, rtol=0, atol=1e-6)

    # An experiment's batch is split over its arms: each image scored by the arm that served it.
    routed = client.post(INFER.format("ab"), json=files_json(files)).get_json()
    arms = routed["parameters"]["arms"]
    expected = [v1[arm][i]["uncertainty"] for i, arm in enumerate(arms)]
    np.testing.assert_allclose(outputs_of(routed)["uncertainty"], expected, rtol=0, atol=1e-6)
    assert outputs_of(routed)["abstained"] == [u >= threshold for u in expected]

    pixels = uint8_json(canvases(4, seed=12))  # pixels sent as is are scored too
    pixel_out = outputs_of(client.post(INFER.format("bagging-2"), json=pixels).get_json())
    assert all(isinstance(u, float) and 0.0 <= u <= 1.0 for u in pixel_out["uncertainty"])

    ids = as_json["parameters"]["prediction_ids"] + header["parameters"]["prediction_ids"]
    ids += routed["parameters"]["prediction_ids"]
    with app.app_context():
        rows = [store.get_prediction(store.get_session(), i) for i in ids]
    assert [r.uncertainty for r in rows] == pytest.approx(want * 2 + expected, abs=1e-6)
    assert [r.abstained for r in rows] == out["abstained"] * 2 + outputs_of(routed)["abstained"]


def test_batch_limit(client, app_bundle):
    app_bundle.bank.calls.clear()
    raw, headers = uint8_binary(canvases(MAX_BATCH))
    full = client.post(INFER.format("bagging-1"), data=raw, headers=headers)
    assert full.status_code == 200
    assert app_bundle.bank.calls == [(("bagging-1",), MAX_BATCH)]
    raw, headers = uint8_binary(np.zeros((MAX_BATCH + 1, 28, 28), dtype=np.uint8))
    over = client.post(INFER.format("bagging-1"), data=raw, headers=headers)
    assert over.status_code == 400
    assert over.get_json() == {
        "error": f"The batch holds {MAX_BATCH + 1} images; at most {MAX_BATCH} are answered per "
        "request. Split it into several requests."
    }


def test_every_image_is_recorded_and_takes_feedback(app, client, admin_headers):
    before = stats(client, admin_headers)["total_predictions"]
    body = client.post(INFER.format("boosting-2"), json=uint8_json(canvases(7))).get_json()
    ids = body["parameters"]["prediction_ids"]
    assert len(set(ids)) == 7
    assert stats(client, admin_headers)["total_predictions"] == before + 7
    with app.app_context():
        rows = [store.get_prediction(store.get_session(), i) for i in ids]
    assert [r.arm for r in rows] == ["boosting-2"] * 7
    assert [r.class_index for r in rows] == outputs_of(body)["class_index"]
    assert {r.features["format"] for r in rows} == {"raw"}
    feedback = client.post(f"/api/v1/predictions/{ids[0]}/feedback", json={"label": 3})
    assert feedback.status_code == 200


def test_a_batch_is_recorded_whole_or_not_at_all(client, admin_headers, monkeypatch):
    """The database failing at a batch's fourth row: a 503, and none of its images stored
    (one transaction for the batch), so no answer the client never got is counted."""
    from sqlalchemy.exc import OperationalError

    from store import queries

    before = stats(client, admin_headers)["total_predictions"]
    real_run, calls = queries._INSERT_PREDICTION.run, []

    def fourth_fails(connection, params):
        calls.append(params["id"])
        if len(calls) == 4:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))
        real_run(connection, params)

    monkeypatch.setattr(queries._INSERT_PREDICTION, "run", fourth_fails)
    response = client.post(INFER.format("bagging"), json=uint8_json(canvases(7)))
    assert response.status_code == 503, response.get_json()
    assert len(calls) == 4
    monkeypatch.undo()
    assert stats(client, admin_headers)["total_predictions"] == before
    served = client.post(INFER.format("bagging"), json=uint8_json(canvases(7)))
    assert served.status_code == 200
    assert stats(client, admin_headers)["total_predictions"] == before + 7


def test_an_experiment_routes_each_image(app, client):
    body = client.post(INFER.format("ab"), json=uint8_json(canvases(40))).get_json()
    arms = body["parameters"]["arms"]
    assert set(arms) == {"bagging", "boosting"}  # 40 fair draws: one arm only has p = 2e-12
    with app.app_context():
        rows = [
            store.get_prediction(store.get_session(), i)
            for i in body["parameters"]["prediction_ids"]
        ]
    assert [r.arm for r in rows] == arms and {r.experiment for r in rows} == {"ab"}


def test_feature_rules_see_the_request_features_and_parameters(client, admin_headers):
    rules = {
        "name": "by-feature",
        "strategy": "feature_based",
        "models": [{"model_id": m} for m in ("bagging", "bagging-1", "boosting-1")],
        "rules": [
            {"condition": "segment == 'vip'", "model": "bagging-1"},
            {"condition": "format == 'raw'", "model": "boosting-1"},
        ],
        "default_model": "bagging",
    }
    created = client.post("/api/v1/inference/ensemble", json=rules, headers=admin_headers)
    assert created.status_code == 201, created.get_json()

    def arms(body: dict) -> list[str]:
        answer = client.post(INFER.format("by-feature"), json=body)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["parameters"]["arms"]

    pixels = canvases(2)
    assert arms(uint8_json(pixels)) == ["boosting-1"] * 2
    vip = uint8_json(pixels, parameters={"features": {"segment": "vip"}})
    assert arms(vip) == ["bagging-1"] * 2
    assert arms(files_json([png(c) for c in pixels])) == ["bagging"] * 2


def test_shadows_run_for_every_image_of_a_batch(app, client, admin_headers):
    shadow = {
        "name": "shadowed",
        "strategy": "shadow",
        "models": [{"model_id": "bagging"}, {"model_id": "boosting-1"}],
        "default_model": "bagging",
        "shadow_models": ["boosting-1"],
    }
    created = client.post("/api/v1/inference/ensemble", json=shadow, headers=admin_headers)
    assert created.status_code == 201, created.get_json()
    response = client.post(INFER.format("shadowed"), json=uint8_json(canvases(3)))
    body = response.get_json()
    with app.app_context():
        query = select(store.Prediction).where(store.Prediction.shadow_of.is_not(None))
        assert store.get_session().execute(query).scalars().all() == []  # not before the answer
    response.close()  # runs the deferred work (shadows), as a WSGI server does after sending
    served = body["parameters"]["prediction_ids"]
    assert body["parameters"]["arms"] == ["bagging"] * 3
    with app.app_context():
        query = select(store.Prediction).where(store.Prediction.shadow_of.is_not(None))
        shadows = store.get_session().execute(query).scalars().all()
    assert sorted(r.shadow_of for r in shadows) == sorted(served)
    assert {r.arm for r in shadows} == {"boosting-1"} and not any(r.error for r in shadows)


def test_client_id_parameter_keeps_a_client_in_one_arm(app, client):
    request = uint8_json(canvases(12), parameters={"client_id": "customer-7"})
    body = client.post(INFER.format("ab"), json=request).get_json()
    assert len(set(body["parameters"]["arms"])) == 1
    with app.app_context():
        row = store.get_prediction(store.get_session(), body["parameters"]["prediction_ids"][0])
    assert row.client_hash == hash_client_id("customer-7")


def test_a_failed_ensemble_is_a_recorded_503(client, admin_headers, break_ensemble):
    message = break_ensemble("bagging")
    answer = client.post(INFER.format("bagging"), json=uint8_json(canvases(3)))
    assert answer.status_code == 503 and message in answer.get_json()["error"]
    assert stats(client, admin_headers)["by_strategy"]["bagging"]["errors"] == 3


def test_a_failed_arm_records_the_whole_batch(client, app, admin_headers, break_ensemble):
    break_ensemble("boosting")
    answer = client.post(INFER.format("ab"), json=uint8_json(canvases(40)))
    assert answer.status_code == 503
    with app.app_context():
        rows = store.get_session().execute(select(store.Prediction)).scalars().all()
    assert len(rows) == 40 and all(r.error for r in rows)
    aborted = [r for r in rows if r.error.startswith("BatchAborted")]
    assert aborted and {r.arm for r in aborted} == {"bagging"}


def test_cross_site_browser_requests_are_refused(client):
    answer = client.post(
        INFER.format("bagging"),
        json=uint8_json(canvases(1)),
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert answer.status_code == 403 and "another site" in answer.get_json()["error"]


# -- bad input ----------------------------------------------------------------------------------
GOOD = uint8_json(canvases(1))
PNG = png(canvases(1)[0])


def with_input(**changes) -> dict:
    tensor = {**GOOD["inputs"][0], **changes}
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


def raw_json(body: dict) -> bytes:
    return json.dumps(body).encode()


BAD_JSON_BODIES = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (raw_json({}), 400, '"inputs" must be a non-empty list'),
    (raw_json({"inputs": []}), 400, '"inputs" must be a non-empty list'),
    (raw_json(with_input(datatype="FP32")), 400, "datatype 'FP32'"),
    (raw_json(with_input(datatype=None)), 400, "datatype 'None'"),
    (raw_json(with_input(shape=[1, 28, 27])), 400, "must have shape [N, 28, 28], got [1, 28, 27]"),
    (raw_json(with_input(shape=[784])), 400, "must have shape [N, 28, 28]"),
    (raw_json(with_input(shape="1,28,28")), 400, "list of non-negative integers"),
    (raw_json(with_input(shape=[-1, 28, 28])), 400, "list of non-negative integers"),
    (raw_json(with_input(shape=[0, 28, 28])), 400, "The batch is empty"),
    (
        raw_json(with_input(shape=[2, 28, 28])),
        400,
        "has 784 values but shape [2, 28, 28] needs 1568",
    ),
    (raw_json(with_input(data=[0] * 783)), 400, "has 783 values"),
    (raw_json(with_input(data=[300] * 784)), 400, "must lie in 0-255"),
    (raw_json(with_input(data=[-1] * 784)), 400, "must lie in 0-255"),
    (raw_json(with_input(data=[0.5] * 784)), 400, "integers from 0 to 255"),
    (raw_json(with_input(data=["a"] * 784)), 400, "integers from 0 to 255"),
    (raw_json(with_input(data=[[0] * 700, [0] * 84])), 400, "integers from 0 to 255"),
    (raw_json(with_input(data=[2**70] * 784)), 400, "integers from 0 to 255"),
    (raw_json(with_input(data=None)), 400, 'neither "data" nor parameters.binary_data_size'),
    (raw_json(with_input(name="pixels")), 400, "Unexpected inputs ('pixels')"),
    (raw_json({"inputs": [GOOD["inputs"][0]] * 2}), 400, "Unexpected inputs (image twice)"),
    (raw_json({"inputs": ["image"]}), 400, "Unexpected inputs"),
    (raw_json(with_input(parameters=[1])), 400, "parameters must be a JSON object"),
    (raw_json({**GOOD, "outputs": [{"name": "logits"}]}), 400, "Unknown output 'logits'"),
    (raw_json({**GOOD, "outputs": []}), 400, '"outputs" must be a non-empty list'),
    (raw_json({**GOOD, "outputs": [{"name": "label"}] * 2}), 400, "requested twice"),
    (
        raw_json({**GOOD, "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}),
        400,
        "binary_data must be true or false",
    ),
    (raw_json({**GOOD, "parameters": {"binary_data_output": 1}}), 400, "true or false"),
    (raw_json({**GOOD, "id": 7}), 400, '"id" must be a string'),
    (raw_json({**GOOD, "parameters": {"client_id": 7}}), 400, "client_id must be a string"),
    (raw_json({**GOOD, "parameters": {"client_id": "x" * 201}}), 400, "client_id is longer"),
    (raw_json({**GOOD, "parameters": {"features": [1]}}), 400, "features must be a JSON object"),
    (raw_json({**GOOD, "parameters": {"features": {"a": [1]}}}), 400, "features.a must be"),
    (raw_json({**GOOD, "parameters": "x"}), 400, "request.parameters must be a JSON object"),
    (raw_json(with_input(datatype="BYTES", shape=[1], data=["%%%"])), 400, "not valid base64"),
    (raw_json(with_input(datatype="BYTES", shape=[1], data=[1])), 400, "base64-encoded image"),
    (raw_json(with_input(datatype="BYTES", shape=[2], data=["AAAA"])), 400, "has 1 files"),
    (raw_json(with_input(datatype="BYTES", shape=[1, 1], data=["AAAA"])), 400, "shape [N]"),
    (
        raw_json(with_input(datatype="BYTES", shape=[1], data=[base64.b64encode(b"hi").decode()])),
        400,
        "image[0]:",
    ),
    (raw_json(with_input(datatype="BYTES", shape=[1], data=[""])), 400, "image[0]:"),
    (
        raw_json(
            with_input(datatype="BYTES", shape=[1], data=[base64.b64encode(PNG[:60]).decode()])
        ),
        422,
        "image[0]:",
    ),
]


def test_bad_json_requests_are_4xx_with_the_reason(client, subtests):
    for raw, status, message in BAD_JSON_BODIES:
        with subtests.test(body=raw[:120]):
            answer = client.post(INFER.format("bagging"), data=raw, content_type="application/json")
            assert answer.status_code == status, answer.get_json()
            assert set(answer.get_json()) == {"error"} and message in answer.get_json()["error"]


def _binary(datatype: str, shape: list, size: int | None, blob: bytes, header_extra=None):
    tensor = {"name": "image", "datatype": datatype, "shape": shape}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    raw, headers = binary_body({"inputs": [tensor]}, blob)
    headers.update(header_extra or {})
    return raw, headers


BAD_BINARY = [
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 783), "only 783 bytes follow"),
    (_binary("UINT8", [1, 28, 28], 783, b"\0" * 783), "has 783 bytes of binary data"),
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 785), "1 bytes follow the JSON header that no"),
    (_binary("UINT8", [1, 28, 28], -1, b""), "binary_data_size must be a non-negative"),
    (_binary("UINT8", [1, 28, 28], True, b"\0"), "binary_data_size must be a non-negative"),
    (_binary("BYTES", [1], 3, b"\1\0\0"), "ends inside an element's 4-byte length"),
    (_binary("BYTES", [1], 6, struct.pack("<I", 99) + b"ab"), "claims 99 bytes but only 2"),
    (_binary("BYTES", [2], 7, bytes_elements([b"abc"])), "has 1 files in its binary data"),
    (_binary("BYTES", [1], 6, bytes_elements([b"no"])), "image[0]:"),
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 784, {HEADER_LENGTH: "99999"}), "says the JSON"),
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 784, {HEADER_LENGTH: "-5"}), "must be a byte"),
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 784, {HEADER_LENGTH: "ten"}), "must be a byte"),
    (_binary("UINT8", [1, 28, 28], 784, b"\0" * 784, {HEADER_LENGTH: "0"}), "not valid JSON"),
    (_binary("UINT8", [1, 28, 28], None, b"\0" * 784), 'neither "data"'),
]


def test_bad_binary_requests_are_400s_with_the_reason(client, subtests):
    for (raw, headers), message in BAD_BINARY:
        with subtests.test(message=message, body=raw[:120]):
            answer = client.post(INFER.format("bagging"), data=raw, headers=headers)
            assert answer.status_code == 400, answer.get_json()
            assert set(answer.get_json()) == {"error"} and message in answer.get_json()["error"]


def test_data_and_binary_size_together_is_refused(client):
    tensor = {**GOOD["inputs"][0], "parameters": {"binary_data_size": 784}}
    raw, headers = binary_body({"inputs": [tensor]}, b"\0" * 784)
    answer = client.post(INFER.format("bagging"), data=raw, headers=headers)
    assert answer.status_code == 400 and "both" in answer.get_json()["error"]


def test_an_oversized_file_or_body_is_refused(make_app):
    client = make_app(MAX_UPLOAD_MB=0.01, MAX_CONTENT_LENGTH=2**20).test_client()
    big = raw_json(
        with_input(datatype="BYTES", shape=[1], data=[base64.b64encode(b"\0" * 20_000).decode()])
    )
    answer = client.post(INFER.format("bagging"), data=big, content_type="application/json")
    assert answer.status_code == 400 and "at most 10485 bytes" in answer.get_json()["error"]
    huge = client.post(INFER.format("bagging"), data=b"\0" * (2**20 + 1))
    assert huge.status_code == 413 and "error" in huge.get_json()


def test_other_methods_and_paths_answer_json(client):
    wrong_method = client.get(INFER.format("bagging"))
    assert wrong_method.status_code == 405 and "POST" in wrong_method.get_json()["error"]
    assert client.get("/v2/nothing-here").status_code == 404
    assert "error" in client.get("/v2/nothing-here").get_json()


def test_a_batch_holds_at_most_four_uploads_worth_of_pixels(make_app) -> None:
    """Each file is capped at MAX_IMAGE_PIXELS, and a batch's files together at four times that:
    256 small-on-the-wire PNGs of 25 MP each would cost a worker minutes of decoding (found by
    review). Here the cap is 10,000 pixels, so five 100x100 images pass the batch's 40,000."""
    app = make_app(MAX_IMAGE_PIXELS=10_000)
    client = app.test_client()
    service = app.extensions["chorus"].prediction
    decoded: list[int] = []

    def counting(data: bytes, max_pixels: int):
        decoded.append(len(data))
        return analyse(data, max_pixels)

    service.preprocess = counting
    canvas = np.zeros((100, 100), np.uint8)
    canvas[20:80, 35:65] = 200
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    four = client.post("/v2/models/bagging/infer", json=files_json([buffer.getvalue()] * 4))
    assert four.status_code == 200
    five = client.post("/v2/models/bagging/infer", json=files_json([buffer.getvalue()] * 5))
    assert five.status_code == 413
    error = five.get_json()["error"]
    assert error.startswith("image[4]: the batch's images hold 50,000 pixels") and "40,000" in error
    # Counted from the headers: the refused batch cost no decode, the accepted one four.
    assert len(decoded) == 4
