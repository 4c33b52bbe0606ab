"""The one normalisation for training and serving: image size, pixel statistics, ``to_tensor``.

Training (``ensembles/trainer.py``) and serving (``serving/``) both call these, so a change to
the statistics can never leave one side behind.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 28
#: Fashion-MNIST training-set pixel statistics (after scaling to [0, 1]).
MEAN = 0.2860
STD = 0.3530


def normalise_(x: torch.Tensor) -> torch.Tensor:
    """Standardise pixels already scaled to [0, 1], in place (training's augmented batches)."""
    return x.sub_(MEAN).div_(STD)


def _normalised(images: np.ndarray) -> torch.Tensor:
    return normalise_(torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0))


#: ``_normalised`` of every uint8 value: the same float32 operations, so indexing it gives
#: the same tensor bit for bit, without three tensor operations per call.
_UINT8_VALUES = _normalised(np.arange(256, dtype=np.uint8)).numpy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> normalised float tensor ``(N, 1, 28, 28)``."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return torch.from_numpy(_UINT8_VALUES[images]).unsqueeze(1)
    return _normalised(images).unsqueeze(1)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU (shared by training and serving)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
