"""Which arithmetic training uses: bf16 autocast only where the hardware computes it."""

import pytest
import torch

from ensembles import trainer


def test_fp32_is_never_autocast():
    assert trainer.autocast_dtype("fp32", torch.device("cpu")) is None


def test_bf16_is_forced_when_asked():
    assert trainer.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        trainer.autocast_dtype("fp16", torch.device("cpu"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2", False)],
)
def test_without_torchs_private_probe_the_cpu_flags_decide(tmp_path, monkeypatch, flags, expected):
    """A torch release without ``_is_mkldnn_bf16_supported`` must not crash training."""

    class NoProbe:  # torch.ops.mkldnn without the private op
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.ops, "mkldnn", NoProbe())
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    assert trainer.cpu_computes_bf16(cpuinfo) is expected
    assert trainer.cpu_computes_bf16(tmp_path / "missing") is False


def test_auto_follows_the_probe(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_computes_bf16", lambda: False)
    assert trainer.autocast_dtype("auto", torch.device("cpu")) is None
    monkeypatch.setattr(trainer, "cpu_computes_bf16", lambda: True)
    assert trainer.autocast_dtype("auto", torch.device("cpu")) is torch.bfloat16
