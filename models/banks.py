"""Member banks: the runtimes that turn a batch of images into every member's probabilities.

An ensemble only sees the ``MemberBank`` protocol (``names`` and ``probabilities``), so another
runtime (ONNX Runtime) or model family is one more bank. ``TorchBank`` runs the fused CNN: all
members in one batched forward, and one by one when that raises, so a single broken member
answers NaN rows (dropped downstream) instead of failing the whole ensemble.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from models.cnn import CNNConfig, FusedMembers, MemberCNN
from models.tensor import resolve_device, to_tensor

log = logging.getLogger(__name__)


@runtime_checkable
class MemberBank(Protocol):
    """What an ensemble needs from its members: names and one batched forward."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Every member's softmax, float64 ``(K, N, C)``; a failing member answers NaN rows."""
        ...

    def select(self, names: Sequence[str]) -> MemberBank:
        """A bank over a subset of the members, in the given order (cascades run one at a time)."""
        ...


class TorchBank:
    """The fused CNN over member state dicts (CPU or CUDA), built lazily and kept."""

    def __init__(
        self,
        state_dicts: Sequence[dict[str, torch.Tensor]],
        names: Sequence[str],
        cnn: CNNConfig,
        device: str = "cpu",
    ) -> None:
        if len(state_dicts) != len(names) or not state_dicts:
            raise ValueError("need one name per member and at least one member")
        self._state_dicts = dict(zip(names, state_dicts, strict=True))
        self._names = tuple(names)
        self.cnn = cnn
        self.device = resolve_device(device)
        self._fused: FusedMembers | None = None
        self._modules: list[MemberCNN] | None = None
        self._subsets: dict[tuple[str, ...], TorchBank] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def fused(self) -> FusedMembers:
        """The batched inference module, built on first use."""
        if self._fused is None:
            sds = [self._state_dicts[name] for name in self._names]
            self._fused = FusedMembers(sds, self.cnn).to(self.device).eval()
        return self._fused

    def select(self, names: Sequence[str]) -> TorchBank:
        key = tuple(names)
        if key == self._names:
            return self
        if key not in self._subsets:
            missing = [name for name in key if name not in self._state_dicts]
            if missing:
                raise KeyError(f"no member named {', '.join(missing)}")
            sds = [self._state_dicts[name] for name in key]
            self._subsets[key] = TorchBank(sds, key, self.cnn, str(self.device))
        return self._subsets[key]

    def _member_modules(self) -> list[MemberCNN]:
        if self._modules is None:
            modules = []
            for name in self._names:
                module = MemberCNN(self.cnn)
                module.load_state_dict(self._state_dicts[name])
                modules.append(module.to(self.device).eval())
            self._modules = modules
        return self._modules

    def _one_by_one(self, x: torch.Tensor) -> np.ndarray:
        """Slow path after the batched forward failed: isolate the members that raise."""
        outputs = []
        for name, module in zip(self._names, self._member_modules(), strict=True):
            try:
                outputs.append(torch.softmax(module(x).double(), dim=-1).cpu().numpy())
            except Exception:
                log.exception("member %s raised; dropping it", name)
                outputs.append(np.full((x.shape[0], self.cnn.num_classes), np.nan))
        return np.stack(outputs)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device)
        try:
            return self.fused.probabilities(x)
        except Exception:
            log.exception("batched member forward failed; running members one by one")
            return self._one_by_one(x)


@torch.inference_mode()
def member_probabilities(
    forward: Callable[[torch.Tensor], np.ndarray],
    images: np.ndarray,
    batch_size: int = 2048,
    desc: str | None = None,
) -> np.ndarray:
    """``forward`` (normalised batch -> members' ``(K, n, C)`` probabilities) over uint8 images,
    in batches: ``(K, N, C)`` (e.g. ``FusedMembers.probabilities`` or a bank's). The one batching
    loop of training, scoring and the benches; it lives here so serving never imports training."""
    starts = range(0, len(images), batch_size)
    chunks = [
        forward(to_tensor(images[start : start + batch_size]))
        for start in tqdm(starts, desc=desc, leave=False, disable=desc is None)
    ]
    return np.concatenate(chunks, axis=1)
