"""ONNX Runtime member bank: the fused CNN exported from the verified weights, run on one thread.

Torch stays the definition (``FusedMembers``), the trainer and the CUDA path; on CPU the same
graph runs about twice as fast under ONNX Runtime. Each member subset an ensemble selects gets
its own graph (exported by ``torch.onnx.export(dynamo=False)``) and its own ``InferenceSession``,
since one graph over every member sliced afterwards pays for the members nobody asked for.
Graphs are cached under ``<cache>/<weights sha256>/`` as content-addressed ``.onnx`` files named
by a record that holds their sha256; a file whose hash differs from its record, that does not
load, or whose outputs on a fixed probe batch differ from torch's is never used. ``member_bank``
picks the runtime (``RUNTIME=auto|onnx|torch``): ``auto`` falls back to torch with a log line
saying why, ``onnx`` refuses with ``OnnxBankError``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.banks import MemberBank, TorchBank
from models.cnn import CNNConfig, FusedMembers
from models.manifest import Manifest
from models.registry import MEMBERS_FILE, Artifact
from models.tensor import IMAGE_SIZE

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
#: Where exported graphs live unless told otherwise (gitignored; keyed by the weights' sha256).
DEFAULT_CACHE = Path(__file__).resolve().parent / ".onnx-cache"
OPSET = 17
#: Logits of the exported graph and of torch on the probe batch must agree this closely.
PROBE_TOLERANCE = 1e-4
PROBE_IMAGES = 4


class OnnxBankError(RuntimeError):
    """The ONNX runtime cannot serve these members (missing package, bad file, wrong outputs)."""


class _Graph(nn.Module):
    """What is exported: the fused forward without the CPU chunking branch (a Python ``if``)."""

    def __init__(self, fused: FusedMembers) -> None:
        super().__init__()
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused._forward(x)


def export_graph(state_dicts: Sequence[dict[str, torch.Tensor]], cnn: CNNConfig) -> bytes:
    """The ONNX bytes of ``FusedMembers`` over these members, batch axis dynamic."""
    graph = _Graph(FusedMembers(state_dicts, cnn).eval())
    buffer = io.BytesIO()
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():  # the TorchScript exporter announces its own deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {1: "n"}},
        )
    return buffer.getvalue()


def probe_batch() -> np.ndarray:
    """A fixed batch of normalised-looking images every graph is checked against torch on."""
    rng = np.random.default_rng(20261202)
    return rng.standard_normal((PROBE_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def session_options() -> Any:
    """One intra-op thread (a gunicorn worker per core), sequential, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    return options


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GraphCache:
    """Exported graphs of one weights file: ``<root>/<weights sha256>/<subset>.json`` records
    naming a content-addressed ``<sha256>.onnx``; ``root=None`` keeps them in memory only."""

    def __init__(self, root: Path | None, weights_sha256: str) -> None:
        if not (len(weights_sha256) == 64 and all(c in "0123456789abcdef" for c in weights_sha256)):
            raise ValueError(f"weights_sha256 must be a hex sha256, got {weights_sha256!r}")
        self.weights_sha256 = weights_sha256
        self.folder = None if root is None else Path(root) / weights_sha256

    def record_path(self, names: Sequence[str]) -> Path | None:
        """The record of one member subset (named by a hash: member names are never paths)."""
        if self.folder is None:
            return None
        return self.folder / f"{_digest(chr(10).join(names).encode())[:32]}.json"

    def read(self, names: Sequence[str]) -> bytes | None:
        """The cached graph of ``names``, verified against its record; None when none is
        cached; ``OnnxBankError`` when one is cached but does not verify."""
        record_path = self.record_path(names)
        if record_path is None or not record_path.is_file():
            return None
        fix = f"delete {record_path} to export it again"
        try:
            record = json.loads(record_path.read_text())
            onnx_sha = str(record["onnx_sha256"])
            ok = record["weights_sha256"] == self.weights_sha256 and record["members"] == list(
                names
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OnnxBankError(
                f"unreadable ONNX cache record {record_path} ({exc}); {fix}"
            ) from None
        if not ok or len(onnx_sha) != 64:
            raise OnnxBankError(f"ONNX cache record {record_path} is for other weights; {fix}")
        graph_path = record_path.parent / f"{onnx_sha}.onnx"
        try:
            data = graph_path.read_bytes()
        except OSError as exc:
            raise OnnxBankError(f"ONNX graph {graph_path} unreadable ({exc}); {fix}") from None
        if _digest(data) != onnx_sha:
            raise OnnxBankError(
                f"ONNX graph {graph_path} does not match the sha256 in {record_path}: the file is "
                f"corrupt or was changed after export; {fix}"
            )
        return data

    def write(self, names: Sequence[str], data: bytes) -> None:
        """Store a freshly exported graph (graph first, then its record, each atomically)."""
        record_path = self.record_path(names)
        if record_path is None:
            return
        onnx_sha = _digest(data)
        record = {
            "weights_sha256": self.weights_sha256,
            "members": list(names),
            "onnx_sha256": onnx_sha,
            "opset": OPSET,
            "torch": torch.__version__,
        }
        try:
            record_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(record_path.parent / f"{onnx_sha}.onnx", data)
            _atomic_write(record_path, (json.dumps(record, indent=2) + "\n").encode())
        except OSError as exc:
            log.warning(
                "ONNX cache %s not writable (%s); keeping the graph in memory", self.folder, exc
            )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over, so readers never see half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OnnxBank:
    """Members behind ONNX Runtime sessions: one per member set, built on first use and kept.

    ``strict`` (``RUNTIME=onnx``) raises ``OnnxBankError`` when a graph cannot be had or does
    not verify; otherwise (``auto``) that member set is served by torch, with a log line."""

    def __init__(
        self,
        state_dicts: Sequence[dict[str, torch.Tensor]],
        names: Sequence[str],
        cnn: CNNConfig,
        cache: GraphCache,
        strict: bool = False,
    ) -> None:
        if len(state_dicts) != len(names) or not state_dicts:
            raise ValueError("need one name per member and at least one member")
        try:
            import onnxruntime  # noqa: F401  (the check: a clear error if it is not installed)
        except ImportError as exc:
            raise OnnxBankError(f"onnxruntime is not installed ({exc})") from None
        self._state_dicts = dict(zip(names, state_dicts, strict=True))
        self._names = tuple(names)
        self.cnn = cnn
        self.cache = cache
        self.strict = strict
        self._torch = TorchBank(list(state_dicts), self._names, cnn)
        self._probe = probe_batch()
        with torch.inference_mode():  # the torch definition's answer every graph must give
            fused = FusedMembers(list(state_dicts), cnn).eval()
            logits = fused(torch.from_numpy(self._probe)).numpy()
        self._reference = dict(zip(self._names, logits, strict=True))
        #: Sessions by member set in this bank's order; views permute their rows.
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._views: dict[tuple[str, ...], MemberBank] = {}
        self._root = _View(self, self._names)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def select(self, names: Sequence[str]) -> MemberBank:
        key = tuple(names)
        if key == self._names:
            return self
        if key not in self._views:
            missing = [name for name in key if name not in self._state_dicts]
            if missing:
                raise KeyError(f"no member named {', '.join(missing)}")
            self._views[key] = _View(self, key)
        return self._views[key]

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        return self._root.probabilities(x)

    def warm_up(self) -> None:
        """Build and verify the session over every member now (start-up, not a request)."""
        self._root.session()

    def _session_for(self, ordered: tuple[str, ...]) -> Any:
        """The verified session over ``ordered`` (a member set in this bank's order), or None
        when not strict and it cannot be had (torch then serves that set)."""
        if ordered not in self._sessions:
            try:
                self._sessions[ordered] = self._build(ordered)
            except OnnxBankError as exc:
                if self.strict:
                    raise
                log.warning("RUNTIME=auto: members %s served by torch: %s", ", ".join(ordered), exc)
                self._sessions[ordered] = None
        return self._sessions[ordered]

    def _build(self, ordered: tuple[str, ...]) -> Any:
        import onnxruntime as ort

        data = self.cache.read(ordered)
        fresh = data is None
        if fresh:
            try:
                data = export_graph([self._state_dicts[n] for n in ordered], self.cnn)
            except Exception as exc:  # the exporter raises many types (missing onnx, tracing)
                raise OnnxBankError(f"ONNX export failed: {type(exc).__name__}: {exc}") from None
        try:
            session = ort.InferenceSession(
                data, session_options(), providers=["CPUExecutionProvider"]
            )
            (got,) = session.run(None, {"x": self._probe})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxBankError(f"ONNX graph does not load or run: {exc}") from None
        want = np.stack([self._reference[n] for n in ordered])
        if got.shape != want.shape or not np.allclose(
            got, want, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE
        ):
            raise OnnxBankError(
                "ONNX graph's outputs differ from the torch members' on the probe batch "
                f"(record {self.cache.record_path(ordered)})"
            )
        if fresh:
            self.cache.write(ordered, data)
        log.debug(
            "ONNX session over %s ready (%s)", ", ".join(ordered), "exported" if fresh else "cached"
        )
        return session


class _View:
    """Members ``names`` of an ``OnnxBank``: one session over them in the bank's order (so a
    permutation of the same members reuses it), rows put back in the requested order."""

    def __init__(self, bank: OnnxBank, names: tuple[str, ...]) -> None:
        self.bank = bank
        self._names = names
        position = {name: i for i, name in enumerate(bank.names)}
        self._ordered = tuple(sorted(names, key=position.__getitem__))
        index = {name: i for i, name in enumerate(self._ordered)}
        self._rows = np.array([index[name] for name in names])
        self._identity = self._ordered == names

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def select(self, names: Sequence[str]) -> MemberBank:
        return self.bank.select(names)

    def session(self) -> Any:
        return self.bank._session_for(self._ordered)

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        session = self.session()
        if session is None:
            return self.bank._torch.select(self._names).probabilities(x)
        images = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if images.shape[0] == 0:
            return np.zeros((len(self._names), 0, self.bank.cnn.num_classes))
        try:
            (logits,) = session.run(None, {"x": images})
        except Exception:  # onnxruntime's own types; torch isolates a failing member
            log.exception(
                "ONNX forward over %s failed; running it in torch", ", ".join(self._names)
            )
            return self.bank._torch.select(self._names).probabilities(x)
        if not self._identity:
            logits = logits[self._rows]
        return softmax64(logits)


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64, as ``TorchBank`` computes it (``.double()``)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def member_bank(
    artifact: Artifact,
    runtime: str = "auto",
    device: str = "cpu",
    cache_dir: Path | None = DEFAULT_CACHE,
) -> MemberBank:
    """The bank over every member of a verified artifact, in the runtime ``runtime`` asks for.

    ``auto``: ONNX Runtime on CPU when its graph verifies, else torch (logged); ``onnx``: ONNX
    Runtime or ``OnnxBankError``; ``torch``: the fused torch CNN (CPU or CUDA)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    info = Manifest.from_dict(artifact.manifest)
    names = list(info.member_names)
    state_dicts = [artifact.members[name] for name in names]
    if runtime == "torch":
        return TorchBank(state_dicts, names, info.cnn, device)
    if torch.device(device).type != "cpu":
        if runtime == "onnx":
            raise OnnxBankError(f"RUNTIME=onnx runs on the CPU; device {device!r} needs torch")
        log.info(
            "RUNTIME=auto on %s: members served by torch (ONNX Runtime is the CPU path)", device
        )
        return TorchBank(state_dicts, names, info.cnn, device)
    try:
        cache = GraphCache(cache_dir, artifact.manifest["files"][MEMBERS_FILE])
        bank = OnnxBank(state_dicts, names, info.cnn, cache, strict=True)
        bank.warm_up()
    except (OnnxBankError, KeyError, ValueError) as exc:
        if runtime == "onnx":
            raise OnnxBankError(f"RUNTIME=onnx cannot serve {artifact.version}: {exc}") from None
        log.warning("RUNTIME=auto: members of %s served by torch: %s", artifact.version, exc)
        return TorchBank(state_dicts, names, info.cnn, device)
    bank.strict = runtime == "onnx"
    log.info(
        "members of %s served by ONNX Runtime (graphs under %s)", artifact.version, cache.folder
    )
    return bank
