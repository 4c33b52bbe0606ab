"""JSON from clients must be text: a lone UTF-16 surrogate is a 400 where it is parsed, not a
500 where the string is later stored or hashed (SQLite and hashlib cannot encode it)."""

from __future__ import annotations

import io
import json

import pytest

from serving import jsontext

LONE = '{"name": "\\ud800"}'


@pytest.mark.parametrize("text", [LONE, LONE.encode(), '["a", {"\\udfff": 1}]', '[[["\\uDC00"]]]'])
def test_a_lone_surrogate_anywhere_is_refused(text) -> None:
    with pytest.raises(jsontext.NotTextError, match="lone UTF-16 surrogate"):
        jsontext.loads(text)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_a_lone_surrogate_in_json_sent_as_utf_16_or_32_is_refused(encoding) -> None:
    """json.loads reads UTF-16 and UTF-32 bytes too; the escape's bytes then hold NULs, which
    the UTF-8 pattern missed (review: a 500 on stop and create)."""
    with pytest.raises(jsontext.NotTextError):
        jsontext.loads(LONE.encode(encoding))
    assert jsontext.loads('{"e": "\\u00e9"}'.encode(encoding)) == {"e": "é"}


def test_console_fields_that_are_not_text_are_a_form_error() -> None:
    from types import SimpleNamespace

    from experiments.spec import SpecError
    from views.admin.routes import form_body

    form = SimpleNamespace(extra=SimpleNamespace(data='{"x\\ud800": 1}'))
    with pytest.raises(SpecError, match="lone UTF-16 surrogate"):
        form_body(form)  # type: ignore[arg-type]


def test_a_surrogate_pair_and_other_escapes_are_text() -> None:
    assert jsontext.loads('{"emoji": "\\ud83d\\ude00", "e": "\\u00e9", "d": "\\uD7FF"}') == {
        "emoji": "\U0001f600",
        "e": "é",
        "d": "\ud7ff",
    }


def test_the_walk_is_not_recursive() -> None:
    deep = "[" * 5000 + '"\\ud800"' + "]" * 5000
    value = json.loads("[" * 500 + "1" + "]" * 500)  # parses; only the walk is under test
    jsontext.check("[" * 500 + "1" + "]" * 500, value)  # no escape: nothing walked
    with pytest.raises((jsontext.NotTextError, RecursionError)):
        jsontext.loads(deep)  # json.loads may refuse the depth first; the walk never does
    nested: list = ["\ud800"]
    for _ in range(50_000):
        nested = [nested]
    with pytest.raises(jsontext.NotTextError):
        jsontext.check(b"\\ud800", nested)


def test_every_json_endpoint_answers_a_lone_surrogate_with_a_400(
    client, admin_headers, image_png, create_experiment
) -> None:
    """The five places the fuzzer found answering 500, through the real app."""

    def post(path: str, body: str, method: str = "POST", **kwargs):
        return client.open(
            path, method=method, data=body, content_type="application/json", **kwargs
        )

    create = post(
        "/api/v1/inference/ensemble",
        '{"name": "\\ud800", "models": [{"model_id": "bagging-0"}]}',
        headers=admin_headers,
    )
    assert create.status_code == 400 and "surrogate" in create.get_json()["error"]
    create_experiment("rr", "round_robin")
    for path, body in [
        ("/api/v1/experiments/rr/stop", '{"reason": "\\ud800"}'),
        ("/api/v1/experiments/rr/promote", '{"model": "boosting", "reason": "\\ud800"}'),
    ]:
        assert post(path, body, headers=admin_headers).status_code == 400
    status = client.get("/api/v1/experiments/rr", headers=admin_headers).get_json()["status"]
    assert status == "running"  # nothing half-done
    predicted = client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(image_png), "x.png"), "strategy": "bagging"}
    )
    prediction = predicted.get_json()["prediction_id"]
    feedback = post(
        f"/api/v1/predictions/{prediction}/feedback",
        '{"label": "Trouser", "reason": "\\ud800"}',
        method="PUT",
        headers=admin_headers,
    )
    assert feedback.status_code == 400
    pixels = json.dumps([0] * 784)
    v2 = post(
        "/v2/models/bagging/infer",
        '{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], '
        f'"data": {pixels}}}], "parameters": {{"client_id": "\\ud800"}}}}',
    )
    assert v2.status_code == 400 and "surrogate" in v2.get_json()["error"]
    features = client.post(
        "/api/v1/predict",
        data={
            "image": (io.BytesIO(image_png), "x.png"),
            "strategy": "bagging",
            "features": '{"segment": "\\ud800"}',
        },
    )
    assert features.status_code == 400 and "surrogate" in features.get_json()["error"]
    utf16 = client.post(
        "/api/v1/experiments/rr/stop",
        data='{"reason": "\\ud800"}'.encode("utf-16"),
        content_type="application/json",
        headers=admin_headers,
    )
    assert utf16.status_code == 400 and "surrogate" in utf16.get_json()["error"]
