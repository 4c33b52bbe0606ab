"""The Open Inference Protocol with the real client: ``tritonclient[http]`` against gunicorn.

One real server (``make serve``'s gunicorn, the shipped artifact) on a free port of 127.0.0.1.
In JSON and in binary mode, files sent as ``BYTES`` and their preprocessed canvases sent as
``UINT8`` must get the answers ``POST /api/v1/predict`` gives for the same files (files: its
abstention and uncertainty too; canvases carry no upload to measure, so theirs are only scored),
and each image must be recorded once.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench.load import Client, GunicornServer, fashion_mnist_pngs, predict_job, total_predictions
from models.preprocess import to_uint8_canvas

pytestmark = pytest.mark.slow
IMAGES = 6
OUTPUTS = ("probabilities", "class_index", "label", "abstained", "uncertainty")
ENSEMBLES = ("bagging", "stacking", "cascade")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One worker is enough here (test_serve_gunicorn covers several); stopped and reaped."""
    workdir: Path = tmp_path_factory.mktemp("v2-gunicorn")
    with GunicornServer(workdir, env={"WEB_CONCURRENCY": "1"}) as running:
        yield running


@pytest.fixture(scope="module")
def triton_client(server: GunicornServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(
        url=server.url.removeprefix("http://"), network_timeout=60
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def files() -> list[bytes]:
    return fashion_mnist_pngs(IMAGES)


@pytest.fixture(scope="module")
def v1_answers(server: GunicornServer, files: list[bytes]) -> dict[str, list[dict]]:
    """``/api/v1/predict``'s answer for every file and ensemble, one request each."""
    answers: dict[str, list[dict]] = {}
    with Client(server.url) as client:
        for name in ENSEMBLES:
            answers[name] = []
            for data in files:
                job = predict_job(data, name)
                status, body = client.request(job.method, job.path, job.body, job.headers)
                assert status == 200, body[:300]
                answers[name].append(json.loads(body))
    return answers


def _infer(
    client: triton.InferenceServerClient,
    name: str,
    tensor: np.ndarray,
    datatype: str,
    binary: bool,
    **kwargs,
) -> triton.InferResult:
    image = triton.InferInput("image", list(tensor.shape), datatype)
    image.set_data_from_numpy(tensor, binary_data=binary)
    outputs = [triton.InferRequestedOutput(out, binary_data=binary) for out in OUTPUTS]
    return client.infer(name, [image], outputs=outputs, **kwargs)


def _files_tensor(files: list[bytes], binary: bool) -> np.ndarray:
    """BYTES elements: the files themselves in binary mode, base64 text in JSON."""
    return np.array([f if binary else base64.b64encode(f) for f in files], dtype=np.object_)


def _labels(result: triton.InferResult) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("label")]


def _assert_same_as_v1(
    result: triton.InferResult, expected: list[dict], same_input: bool = True
) -> None:
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(expected), 10)
    want = np.array([list(answer["probabilities"].values()) for answer in expected])
    np.testing.assert_allclose(probabilities, want, rtol=0, atol=1e-6)
    assert result.as_numpy("class_index").tolist() == [a["class_index"] for a in expected]
    assert _labels(result) == [a["label"] for a in expected]
    abstained, uncertainty = result.as_numpy("abstained"), result.as_numpy("uncertainty")
    assert abstained.dtype == np.bool_ and abstained.shape == (len(expected),)
    assert uncertainty.dtype == np.float32 and uncertainty.shape == (len(expected),)
    assert np.all((uncertainty >= 0) & (uncertainty <= 1)), uncertainty  # scored: no NaN
    if same_input:
        assert abstained.tolist() == [a["abstained"] for a in expected]
        want = [a["uncertainty"] for a in expected]
        np.testing.assert_allclose(uncertainty, want, rtol=0, atol=1e-6)


def test_health_and_metadata_through_the_client(
    triton_client: triton.InferenceServerClient,
) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert server["name"] == "chorus" and "binary_tensor_data" in server["extensions"]
    metadata = triton_client.get_model_metadata("bagging")
    assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert [o["name"] for o in metadata["outputs"]] == list(OUTPUTS)
    version = metadata["versions"][0]
    assert triton_client.is_model_ready("bagging-0")
    assert triton_client.is_model_ready("ab", model_version=version)
    assert not triton_client.is_model_ready("ab", model_version="no-such-version")
    assert not triton_client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_files_get_the_answers_of_the_v1_api(
    server: GunicornServer,
    triton_client: triton.InferenceServerClient,
    files: list[bytes],
    v1_answers: dict[str, list[dict]],
    binary: bool,
) -> None:
    before = total_predictions(server.url, server.admin_password)
    for name in ENSEMBLES:
        result = _infer(triton_client, name, _files_tensor(files, binary), "BYTES", binary)
        _assert_same_as_v1(result, v1_answers[name])
        ids = result.get_response()["parameters"]["prediction_ids"]
        assert len(set(ids)) == IMAGES
    assert total_predictions(server.url, server.admin_password) == before + IMAGES * len(ENSEMBLES)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_uint8_canvases_get_the_answers_of_the_v1_api(
    triton_client: triton.InferenceServerClient,
    files: list[bytes],
    v1_answers: dict[str, list[dict]],
    binary: bool,
) -> None:
    canvases = np.stack([to_uint8_canvas(data) for data in files])
    for name in ENSEMBLES:
        result = _infer(triton_client, name, canvases, "UINT8", binary)
        _assert_same_as_v1(result, v1_answers[name], same_input=False)


def test_an_experiment_routes_and_records_every_image(
    server: GunicornServer, triton_client: triton.InferenceServerClient, files: list[bytes]
) -> None:
    before = total_predictions(server.url, server.admin_password)
    result = _infer(
        triton_client,
        "ab",
        _files_tensor(files, True),
        "BYTES",
        True,
        parameters={"client_id": "v2-sticky-client"},
    )
    arms = result.get_response()["parameters"]["arms"]
    assert len(arms) == IMAGES and len(set(arms)) == 1 and arms[0] in ("bagging", "boosting")
    assert total_predictions(server.url, server.admin_password) == before + IMAGES
    assert f"batch of {IMAGES}: ab via {arms[0]} x{IMAGES}" in server.log_text()


def test_a_member_answers_a_batch_in_one_forward(
    server: GunicornServer, triton_client: triton.InferenceServerClient, files: list[bytes]
) -> None:
    canvases = np.stack([to_uint8_canvas(data) for data in files] * 8)  # 48 images
    result = _infer(triton_client, "boosting-1", canvases, "UINT8", True)
    assert result.as_numpy("probabilities").shape == (len(canvases), 10)
    assert set(result.get_response()["parameters"]["arms"]) == {"boosting-1"}
    assert f"batch of {len(canvases)}: boosting-1 via boosting-1 x{len(canvases)}" in (
        server.log_text()
    )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bad_requests_are_400s_with_the_reason(
    triton_client: triton.InferenceServerClient, binary: bool
) -> None:
    wrong_shape = np.zeros((1, 28, 27), dtype=np.uint8)
    with pytest.raises(InferenceServerException) as refused:
        _infer(triton_client, "bagging", wrong_shape, "UINT8", binary)
    assert refused.value.status() == "400"
    assert "shape [N, 28, 28]" in refused.value.message()
    too_many = np.zeros((257, 28, 28), dtype=np.uint8)
    with pytest.raises(InferenceServerException) as refused:
        _infer(triton_client, "bagging", too_many, "UINT8", binary)
    assert refused.value.status() == "400" and "at most 256" in refused.value.message()
    not_images = _files_tensor([b"hello, not an image"], binary)
    with pytest.raises(InferenceServerException) as refused:
        _infer(triton_client, "bagging", not_images, "BYTES", binary)
    assert refused.value.status() == "400" and "image[0]" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        _infer(triton_client, "no-such-model", wrong_shape, "UINT8", binary)
    assert refused.value.status() == "404"
