"""Training and batch inference for CNN members, shared by every strategy.

``fit_members`` trains K members at once as one ``GroupedCNN``: member k draws its batches from
its own index list (a bootstrap resample for bagging, a weighted resample for a boosting round),
so K members cost one forward/backward per step instead of K.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from models.cnn import CNNConfig, GroupedCNN
from models.tensor import IMAGE_SIZE, normalise_

log = logging.getLogger(__name__)
PAD = 2


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser hyper-parameters for one member (SGD + one-cycle schedule)."""

    epochs: int = 10
    batch_size: int = 128
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    #: "auto": bfloat16 autocast where the device computes it natively (CUDA with bf16, or a
    #: CPU with AVX512-BF16/AMX, ~2.7x faster here); "fp32" always trains in float32.
    precision: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training, or None for plain float32; weights stay float32."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_computes_bf16() else None


def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX).

    torch has no public probe: ask its private oneDNN check when it exists, and read the CPU
    flags when a torch release drops it, so an upgrade costs speed (fp32), never a crash.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to ``PAD`` pixels and horizontal flip, per image; x is ``(B, 28, 28)``."""
    b, device = x.shape[0], x.device
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    offsets = torch.randint(0, 2 * PAD + 1, (2, b), generator=generator).to(device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(device)
    ar = torch.arange(IMAGE_SIZE, device=device)
    rows = offsets[0, :, None] + ar
    cols = torch.where(
        flip[:, None], offsets[1, :, None] + IMAGE_SIZE - 1 - ar, offsets[1, :, None] + ar
    )
    return padded[torch.arange(b, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def warmup_cosine(total_steps: int, warmup: float = 0.25):
    """LR factor: linear warm-up over the first quarter, cosine decay to zero; any step count."""
    warm = max(1, int(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit_members(
    images: np.ndarray,
    labels: np.ndarray,
    index_sets: Sequence[np.ndarray],
    cnn: CNNConfig,
    config: TrainConfig,
    seed: int,
    device: torch.device,
    desc: str = "members",
) -> list[dict[str, torch.Tensor]]:
    """Train ``len(index_sets)`` members jointly; member k trains on ``images[index_sets[k]]``.

    Returns one plain ``MemberCNN`` state dict per member (on the CPU).
    """
    k = len(index_sets)
    n = min(len(s) for s in index_sets)
    if n < 1:
        raise ValueError("every member needs at least one training image")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0).to(device)
    y_all = torch.from_numpy(np.array(labels, dtype=np.int64)).to(device)
    model = GroupedCNN(k, cnn).to(device).to(memory_format=torch.channels_last)
    batch = min(config.batch_size, n)
    steps = n // batch
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.max_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(config.epochs * steps))
    amp = autocast_dtype(config.precision, device)
    log.info("%s: %d member(s), %d steps/epoch, autocast %s", desc, k, steps, amp or "off")
    model.train()
    with tqdm(total=config.epochs * steps, desc=desc, unit="step", leave=False) as bar:
        for epoch in range(config.epochs):
            orders = [torch.from_numpy(rng.permutation(s)[: steps * batch]) for s in index_sets]
            order = torch.stack(orders, dim=1).to(device)  # (steps*batch, K)
            total = 0.0
            for step in range(steps):
                idx = order[step * batch : (step + 1) * batch]  # (batch, K)
                xb = x_all[idx.reshape(-1)]
                if config.augment:
                    xb = augment(xb, gen)
                xb = normalise_(xb).view(batch, k, IMAGE_SIZE, IMAGE_SIZE)
                xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(
                    device.type, dtype=amp or torch.float32, enabled=amp is not None
                ):
                    logits = model(xb)  # (K, batch, C)
                target = y_all[idx].t()  # (K, batch)
                logits = logits.float().reshape(-1, logits.shape[-1])
                loss = F.cross_entropy(logits, target.reshape(-1))
                opt.zero_grad(set_to_none=True)
                (loss * k).backward()  # sum over members: each member sees a mean-loss gradient
                opt.step()
                sched.step()
                total += loss.item()
                bar.update()
            log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, config.epochs, total / steps)
    model.eval()
    return [{key: v.cpu() for key, v in sd.items()} for sd in model.member_state_dicts()]
