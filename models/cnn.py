"""CNN members and the grouped form that trains or runs K of them in one forward.

A member is a small VGG-style network (``MemberCNN``); its checkpoint is a plain state dict.
``GroupedCNN`` holds K members as grouped convolutions: K members train jointly in one
forward/backward (each on its own batch) and export K ordinary member state dicts.
``FusedMembers`` is the inference form: batch-norm folded into the convolutions, the shared
input fed to one wide first convolution, and every later layer grouped by member, so a K-member
ensemble costs one call per layer instead of K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.tensor import IMAGE_SIZE


@dataclass(frozen=True)
class CNNConfig:
    """Architecture hyper-parameters shared by every member of an artifact.

    Each stage is two 3x3 conv-BN-ReLU layers of ``stages[i]`` channels followed by a 2x2 max
    pool; a final convolution over the remaining map plays the linear classifier.
    """

    stages: tuple[int, ...] = (32, 64)
    num_classes: int = 10
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CNNConfig:
        return cls(
            stages=tuple(int(c) for c in data["stages"]),
            num_classes=int(data["num_classes"]),
            dropout=float(data["dropout"]),
        )

    @property
    def head_size(self) -> int:
        size = IMAGE_SIZE
        for _ in self.stages:
            size //= 2
        return size


def _block(c_in: int, c_out: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, groups=groups),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _trunk(in_channels: int, k: int, config: CNNConfig) -> nn.Sequential:
    """Stages of conv-conv-pool, dropout, then the 'linear' head conv; one layout for 1 or K."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for width in config.stages:
        layers += _block(c_in, k * width, groups=k) + _block(k * width, k * width, groups=k)
        layers.append(nn.MaxPool2d(2))
        c_in = k * width
    layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Conv2d(c_in, k * config.num_classes, config.head_size, groups=k))
    return nn.Sequential(*layers)


class MemberCNN(nn.Module):
    """One ensemble member: ``(N, 1, 28, 28)`` normalised images -> ``(N, classes)`` logits."""

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CNNConfig()
        self.net = _trunk(1, 1, self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class GroupedCNN(nn.Module):
    """K members as grouped convolutions; ``(N, K, 28, 28)`` -> ``(K, N, classes)`` logits.

    Member k sees only input channel k, so each member can train on its own batch.
    """

    def __init__(self, k: int, config: CNNConfig | None = None) -> None:
        super().__init__()
        self.k = k
        self.config = config or CNNConfig()
        self.net = _trunk(k, k, self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x).flatten(1)  # (N, K*C)
        return logits.view(x.shape[0], self.k, -1).transpose(0, 1)

    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Split the grouped weights into K ordinary ``MemberCNN`` state dicts."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.k)]
        for key, value in self.net.state_dict().items():
            if value.ndim == 0:  # BatchNorm's num_batches_tracked: shared counter
                for sd in out:
                    sd[f"net.{key}"] = value.clone()
                continue
            for i, chunk in enumerate(value.chunk(self.k, dim=0)):
                out[i][f"net.{key}"] = chunk.clone()
        return out

    @classmethod
    def from_members(
        cls, state_dicts: Sequence[dict[str, torch.Tensor]], config: CNNConfig
    ) -> GroupedCNN:
        """Inverse of ``member_state_dicts``: K member checkpoints -> one grouped module."""
        grouped = cls(len(state_dicts), config)
        merged = {}
        for key in grouped.net.state_dict():
            parts = [sd[f"net.{key}"] for sd in state_dicts]
            merged[key] = parts[0] if parts[0].ndim == 0 else torch.cat(parts, dim=0)
        grouped.net.load_state_dict(merged)
        return grouped


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode batch norm into the preceding convolution's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.detach(), bias.detach()


class FusedMembers(nn.Module):
    """Inference-only K-member bank: ``(N, 1, 28, 28)`` -> ``(K, N, classes)`` logits.

    Built from member state dicts; numerically equal to running each member in eval mode.
    """

    def __init__(
        self, state_dicts: Sequence[dict[str, torch.Tensor]], config: CNNConfig, chunk: int = 8
    ) -> None:
        super().__init__()
        self.k = len(state_dicts)
        self.chunk = chunk
        grouped = GroupedCNN.from_members(state_dicts, config).eval()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.plan: list[str] = []  # "conv" (with folded BN and ReLU) or "pool", then the head
        layers = list(grouped.net)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm2d):
                w, b = _fold_bn(layers[i - 1], layer)
            elif isinstance(layer, nn.MaxPool2d):
                self.plan.append("pool")
                continue
            elif i == len(layers) - 1:
                w, b = layer.weight.detach(), layer.bias.detach()
            else:
                continue
            self.weights.append(nn.Parameter(w, requires_grad=False))
            self.biases.append(nn.Parameter(b, requires_grad=False))
            self.plan.append("conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # K members' activations for a large batch overflow the CPU caches (9 members x 64
        # images is ~60 MB per layer), so large batches run in cache-sized chunks.
        if x.shape[0] > self.chunk and x.device.type == "cpu":
            return torch.cat([self._forward(part) for part in x.split(self.chunk)], dim=1)
        return self._forward(x)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Every member's softmax as float64 ``(K, N, C)``; ``x`` moves to the bank's device."""
        return torch.softmax(self(x.to(self.weights[0].device)).double(), dim=-1).cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.k
        x = x.contiguous(memory_format=torch.channels_last)
        params = iter(zip(self.weights, self.biases, strict=True))
        last = len(self.plan) - 1
        for i, op in enumerate(self.plan):
            if op == "pool":
                x = F.max_pool2d(x, 2)
                continue
            w, b = next(params)
            # The input is shared, so the first layer is one ungrouped conv with K*c filters.
            groups = 1 if i == 0 else k
            if i == last:
                x = F.conv2d(x, w, b, groups=groups)
            else:
                x = F.relu(F.conv2d(x, w, b, padding=1, groups=groups))
        return x.flatten(1).view(n, k, -1).transpose(0, 1)


def flops_per_image(config: CNNConfig) -> int:
    """Multiply-adds x2 of one member's forward on one image (convolutions and head)."""
    macs, size, c_in = 0, IMAGE_SIZE, 1
    for width in config.stages:
        macs += size * size * 9 * (c_in * width + width * width)
        size //= 2
        c_in = width
    macs += c_in * size * size * config.num_classes
    return 2 * macs
