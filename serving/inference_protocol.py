"""The Open Inference Protocol (KServe V2) on the wire, without Flask: request bytes -> arrays,
answers -> response bytes, JSON tensors and Triton's binary tensor extension alike.

Chorus models take one input, ``image``: ``UINT8 [N, 28, 28]`` (pixels already framed like
Fashion-MNIST) or ``BYTES [N]`` (encoded image files: base64 text in JSON, raw bytes in the
binary extension). They answer ``probabilities FP32 [N, C]``, ``class_index INT64 [N]`` and
``label BYTES [N]`` (the contract's outputs), plus ``abstained BOOL [N]`` and ``uncertainty
FP32 [N]`` as ``/api/v1/predict`` scores them (NaN in binary, null in JSON: not scored, when the
artifact has no fitted abstention). Every malformed request raises ``ProtocolError`` (a 400)
naming what was wrong, so nothing a client sends can become a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.tensor import IMAGE_SIZE
from serving import jsontext
from serving.errors import InvalidRequest

#: The request/response header of the binary tensor extension: the JSON part's length.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Images one request may carry; they are answered in one forward.
MAX_BATCH = 256
INPUT_NAME = "image"
OUTPUT_TYPES = {
    "probabilities": "FP32",
    "class_index": "INT64",
    "label": "BYTES",
    "abstained": "BOOL",
    "uncertainty": "FP32",
}
OUTPUT_NAMES: tuple[str, ...] = tuple(OUTPUT_TYPES)
#: Little-endian numpy dtypes of the fixed-size datatypes (BYTES are length-prefixed).
NUMPY_TYPES = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}
EXTENSIONS: tuple[str, ...] = ("binary_tensor_data",)
MAX_ID_LENGTH = 256
PIXELS = IMAGE_SIZE * IMAGE_SIZE
_LENGTH_PREFIX = struct.Struct("<I")
_USAGE = (
    f"Send one input named {INPUT_NAME!r}: datatype UINT8 with shape [N, 28, 28] (pixels, light "
    "item on black) or BYTES with shape [N] (image files, base64 in JSON), N from 1 to "
    f"{MAX_BATCH}."
)


class ProtocolError(InvalidRequest):
    """A request the protocol (or this model's signature) does not allow: HTTP 400."""


def _server_version() -> str:
    """Chorus's version as pyproject.toml states it (the one place it is written)."""
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


SERVER_VERSION = _server_version()


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: exactly one of ``canvases`` or ``files`` is set."""

    id: str | None
    canvases: np.ndarray | None  # (N, 28, 28) uint8: no upload preprocessing
    files: list[bytes] | None  # encoded image files: the upload preprocessing applies
    outputs: tuple[RequestedOutput, ...]
    client_id: str | None
    features: Mapping[str, Any] | None


@dataclass(frozen=True)
class InferAnswer:
    """What the model said about each image of a batch, in request order."""

    probabilities: np.ndarray  # (N, C)
    class_index: np.ndarray  # (N,)
    labels: Sequence[str]
    prediction_ids: Sequence[str]
    arms: Sequence[str]
    abstained: np.ndarray  # (N,) bool
    uncertainty: np.ndarray  # (N,) float32, NaN where not scored


def answer_from_bodies(bodies: Sequence[Mapping[str, Any]]) -> InferAnswer:
    """A batch's answer from its per-image prediction bodies (``serving.contract``'s shape)."""
    return InferAnswer(
        probabilities=np.array([list(b["probabilities"].values()) for b in bodies], dtype="<f4"),
        class_index=np.array([b["class_index"] for b in bodies], dtype="<i8"),
        labels=[b["label"] for b in bodies],
        prediction_ids=[b["prediction_id"] for b in bodies],
        arms=[b["arm"] for b in bodies],
        abstained=np.array([bool(b["abstained"]) for b in bodies], dtype=bool),
        uncertainty=np.array(
            [math.nan if b["uncertainty"] is None else b["uncertainty"] for b in bodies],
            dtype="<f4",
        ),
    )


# -- metadata ------------------------------------------------------------------------------------
def server_metadata() -> dict[str, Any]:
    """``GET /v2``: who this server is and which protocol extensions it speaks."""
    return {"name": "chorus", "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, kind: str, version: str, classes: Sequence[str]) -> dict[str, Any]:
    """``GET /v2/models/<name>``: the model's signature (-1 is a batch dimension of any size)."""
    return {
        "name": name,
        "versions": [version],
        "platform": "pytorch" if kind == "member" else f"chorus_{kind}",
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, 28, 28]}],
        "outputs": [
            {
                "name": output,
                "datatype": datatype,
                "shape": [-1, len(classes)] if output == "probabilities" else [-1],
            }
            for output, datatype in OUTPUT_TYPES.items()
        ],
        # Not in the spec's schema, which has one datatype per input: the other accepted form.
        "parameters": {
            "kind": kind,
            "classes": list(classes),
            "max_batch_size": MAX_BATCH,
            "alternative_inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        },
    }


# -- requests ------------------------------------------------------------------------------------
def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a body (the binary part is empty without the header)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ProtocolError(
            f"{HEADER_LENGTH} must be a byte count, got {header_length[:20]!r}.", HEADER_LENGTH
        )
    length = int(text)
    if length > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} says the JSON header is {length} bytes, but the body has only "
            f"{len(body)}. Send the JSON header's exact length.",
            HEADER_LENGTH,
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = jsontext.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"The request is not valid JSON ({str(exc)[:120]}). {_USAGE}", "body"
        ) from None
    if not isinstance(body, dict):
        raise ProtocolError(f'The request must be a JSON object with "inputs". {_USAGE}', "body")
    return body


def _parameters(holder: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    value = holder.get("parameters", {})
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{where}.parameters must be a JSON object.", "parameters")
    return value


def _flag(parameters: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}.parameters.{key} must be true or false.", key)
    return value


def _shape(tensor: Mapping[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(
            f'Input {INPUT_NAME!r} needs "shape": a list of non-negative integers. {_USAGE}',
            "shape",
        )
    return shape


def _batch_size(shape: list[int], datatype: str) -> int:
    expected = "[N, 28, 28]" if datatype == "UINT8" else "[N]"
    rank = 3 if datatype == "UINT8" else 1
    if len(shape) != rank or (rank == 3 and shape[1:] != [IMAGE_SIZE, IMAGE_SIZE]):
        raise ProtocolError(
            f"Input {INPUT_NAME!r} of datatype {datatype} must have shape {expected}, "
            f"got {shape}. {_USAGE}",
            "shape",
        )
    n = shape[0]
    if n == 0:
        raise ProtocolError(f"The batch is empty (shape {shape}). {_USAGE}", "shape")
    if n > MAX_BATCH:
        raise ProtocolError(
            f"The batch holds {n} images; at most {MAX_BATCH} are answered per request. "
            "Split it into several requests.",
            "shape",
        )
    return n


def _uint8_from_json(data: Any, n: int) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        array = np.asarray([None], dtype=object)
    if array.dtype.kind not in "iub" or array.size != n * PIXELS:
        if array.dtype.kind in "iub":
            raise ProtocolError(
                f"Input {INPUT_NAME!r} has {array.size} values but shape [{n}, 28, 28] needs "
                f"{n * PIXELS}.",
                "data",
            )
        raise ProtocolError(
            f'Input {INPUT_NAME!r} (UINT8) needs "data": {n * PIXELS} integers from 0 to 255 '
            "in row-major order.",
            "data",
        )
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ProtocolError(f"UINT8 pixels must lie in 0-255 (input {INPUT_NAME!r}).", "data")
    return array.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)


def _uint8_from_binary(data: memoryview, n: int) -> np.ndarray:
    if len(data) != n * PIXELS:
        raise ProtocolError(
            f"Input {INPUT_NAME!r} has {len(data)} bytes of binary data but shape "
            f"[{n}, 28, 28] of UINT8 needs {n * PIXELS}.",
            "binary_data_size",
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE).copy()


def _files_from_json(data: Any, n: int) -> list[bytes]:
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise ProtocolError(
            f'Input {INPUT_NAME!r} (BYTES) needs "data": a list of base64-encoded image files.',
            "data",
        )
    if len(data) != n:
        raise ProtocolError(
            f"Input {INPUT_NAME!r} has {len(data)} files but shape [{n}] says {n}.", "data"
        )
    files = []
    for index, text in enumerate(data):
        try:
            files.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(
                f"{INPUT_NAME}[{index}] is not valid base64; in JSON, BYTES elements are image "
                "files encoded as base64 text.",
                "data",
            ) from None
    return files


def _files_from_binary(data: memoryview, n: int) -> list[bytes]:
    """BYTES elements in the binary extension: each a 4-byte little-endian length, then bytes."""
    files, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ProtocolError(
                f"Input {INPUT_NAME!r}'s binary data ends inside an element's 4-byte length.",
                "binary_data_size",
            )
        (length,) = _LENGTH_PREFIX.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise ProtocolError(
                f"{INPUT_NAME}[{len(files)}] claims {length} bytes but only "
                f"{len(data) - offset} remain in its binary data.",
                "binary_data_size",
            )
        files.append(bytes(data[offset : offset + length]))
        offset += length
    if len(files) != n:
        raise ProtocolError(
            f"Input {INPUT_NAME!r} has {len(files)} files in its binary data but shape [{n}] "
            f"says {n}.",
            "binary_data_size",
        )
    return files


def _binary_slice(tensor: Mapping[str, Any], binary: memoryview, offset: int) -> memoryview | None:
    """The tensor's share of the binary part, or None when its data is in the JSON."""
    parameters = _parameters(tensor, f"inputs[{INPUT_NAME}]")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise ProtocolError(
                f'Input {INPUT_NAME!r} has neither "data" nor parameters.binary_data_size.', "data"
            )
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("binary_data_size must be a non-negative integer.", "binary_data_size")
    if "data" in tensor:
        raise ProtocolError(
            f'Input {INPUT_NAME!r} has both "data" and binary_data_size; send one.', "data"
        )
    if offset + size > len(binary):
        raise ProtocolError(
            f"Input {INPUT_NAME!r} says binary_data_size {size}, but only "
            f"{len(binary) - offset} bytes follow the JSON header.",
            "binary_data_size",
        )
    return binary[offset : offset + size]


def _image_input(
    inputs: Any, binary: memoryview, max_file_bytes: int
) -> tuple[np.ndarray | None, list[bytes] | None]:
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f'"inputs" must be a non-empty list. {_USAGE}', "inputs")
    names = [tensor.get("name") if isinstance(tensor, dict) else None for tensor in inputs]
    unknown = [name for name in names if name != INPUT_NAME]
    if unknown or len(names) != 1:
        shown = ", ".join(repr(str(name)[:40]) for name in unknown) or "image twice"
        raise ProtocolError(f"Unexpected inputs ({shown}). {_USAGE}", "inputs")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype not in ("UINT8", "BYTES"):
        raise ProtocolError(
            f"Input {INPUT_NAME!r} has datatype {str(datatype)[:20]!r}. {_USAGE}", "datatype"
        )
    n = _batch_size(_shape(tensor), datatype)
    raw = _binary_slice(tensor, binary, 0)
    used = 0 if raw is None else len(raw)
    if used != len(binary):
        raise ProtocolError(
            f"{len(binary) - used} bytes follow the JSON header that no input claims "
            "(binary_data_size); check the inputs' sizes.",
            "binary_data_size",
        )
    if datatype == "UINT8":
        pixels = _uint8_from_json(tensor["data"], n) if raw is None else _uint8_from_binary(raw, n)
        return pixels, None
    files = _files_from_json(tensor["data"], n) if raw is None else _files_from_binary(raw, n)
    for index, data in enumerate(files):
        if len(data) > max_file_bytes:
            raise ProtocolError(
                f"{INPUT_NAME}[{index}] is {len(data)} bytes; an image may have at most "
                f"{max_file_bytes} bytes. Send a smaller file.",
                "data",
            )
    return None, files


def _outputs(body: Mapping[str, Any], binary_default: bool) -> tuple[RequestedOutput, ...]:
    requested = body.get("outputs")
    if requested is None:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUT_NAMES)
    if not isinstance(requested, list) or not requested:
        raise ProtocolError(
            f'"outputs" must be a non-empty list naming some of {", ".join(OUTPUT_NAMES)}.',
            "outputs",
        )
    chosen: list[RequestedOutput] = []
    for entry in requested:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in OUTPUT_NAMES:
            raise ProtocolError(
                f"Unknown output {str(name)[:40]!r}; the outputs are {', '.join(OUTPUT_NAMES)}.",
                "outputs",
            )
        if any(out.name == name for out in chosen):
            raise ProtocolError(f"Output {name!r} is requested twice.", "outputs")
        parameters = _parameters(entry, f"outputs[{name}]")
        binary = _flag(parameters, "binary_data", f"outputs[{name}]", binary_default)
        chosen.append(RequestedOutput(name, binary))
    return tuple(chosen)


def _optional_text(parameters: Mapping[str, Any], key: str) -> str | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"parameters.{key} must be a string.", key)
    return value


def decode_request(body: bytes, header_length: str | None, max_file_bytes: int) -> InferRequest:
    """Turn an infer request's body (and its ``Inference-Header-Content-Length``) into arrays."""
    raw_json, binary = _split(body, header_length)
    request = _json_object(raw_json)
    request_id = request.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH
    ):
        raise ProtocolError(f'"id" must be a string of at most {MAX_ID_LENGTH} characters.', "id")
    parameters = _parameters(request, "request")
    features = parameters.get("features")
    if features is not None and not isinstance(features, Mapping):
        raise ProtocolError('parameters.features must be a JSON object, e.g. {"segment": "a"}.')
    canvases, files = _image_input(request.get("inputs"), binary, max_file_bytes)
    binary_default = _flag(parameters, "binary_data_output", "request")
    return InferRequest(
        id=request_id,
        canvases=canvases,
        files=files,
        outputs=_outputs(request, binary_default),
        client_id=_optional_text(parameters, "client_id"),
        features=features,
    )


# -- responses -----------------------------------------------------------------------------------
def _tensor(name: str, answer: InferAnswer) -> tuple[list[int], Any]:
    """(shape, numpy array or list of bytes) of one output."""
    if name == "label":
        return [len(answer.labels)], [label.encode("utf-8") for label in answer.labels]
    array = np.ascontiguousarray(getattr(answer, name), dtype=NUMPY_TYPES[OUTPUT_TYPES[name]])
    return list(array.shape), array


def _binary(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return value.tobytes()
    return b"".join(_LENGTH_PREFIX.pack(len(item)) + item for item in value)


def _json_data(value: Any) -> list[Any]:
    """JSON elements of an output; a NaN (not scored) is null, as JSON has no NaN."""
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1).tolist()
        if value.dtype.kind == "f":
            return [None if math.isnan(x) else x for x in flat]
        return flat
    return [item.decode("utf-8") for item in value]


def encode_response(
    model_name: str, model_version: str, request: InferRequest, answer: InferAnswer
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    outputs, blobs = [], []
    for requested in request.outputs:
        shape, value = _tensor(requested.name, answer)
        tensor: dict[str, Any] = {
            "name": requested.name,
            "datatype": OUTPUT_TYPES[requested.name],
            "shape": shape,
        }
        if requested.binary:
            blob = _binary(value)
            blobs.append(blob)
            tensor["parameters"] = {"binary_data_size": len(blob)}
        else:
            tensor["data"] = _json_data(value)
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["parameters"] = {
        "prediction_ids": list(answer.prediction_ids),
        "arms": list(answer.arms),
    }
    response["outputs"] = outputs
    header = json.dumps(response, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
