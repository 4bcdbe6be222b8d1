"""What a trained model is fed and how its settings are checked, in NumPy: every backend (PyTorch, ONNX Runtime)
prepares its input and reads its output here, so a model served from an ``.onnx`` never needs PyTorch."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from petseg.errors import PetsegError

MAX_IMAGE_SIZE = 4096  # a model's input side; a larger one in a checkpoint is corrupt or hostile (memory)


class Backend(Protocol):
    """What `petseg predict` and the pyfunc run: a Predictor (PyTorch) or an OnnxPredictor (ONNX Runtime)."""

    name: str
    image_size: int
    threshold: float

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...


def normalized(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, S, S, 3) -> the float32 (N, 3, S, S) batch a model takes. The same float32 operations, in the same
    order, as the evaluation transforms (to [0, 1], minus mean, over std): the same bits as the scored inputs."""
    batch = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((batch - mean) / np.asarray(std, dtype=np.float32)[:, None, None])


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Pet probabilities from logits, float32, without overflow warnings for large negative logits."""
    logits = np.asarray(logits, dtype=np.float32)
    return np.exp(-np.logaddexp(np.float32(0), -logits)).astype(np.float32)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_serving(path, image_size: Any, mean: tuple, std: tuple, tta: Any, threshold: Any) -> None:
    """Every number a checkpoint (or an export's metadata) feeds the model with, in a range that gives real masks:
    a NaN, a huge or a denormal mean or std would silently predict empty masks."""
    if not (isinstance(image_size, int) and 32 <= image_size <= MAX_IMAGE_SIZE and image_size % 32 == 0):
        raise PetsegError(f"{path}: image_size {image_size!r} is not a model input size (32..{MAX_IMAGE_SIZE}, /32)")
    sane_mean = len(mean) == 3 and all(_number(v) and -10 < v < 10 for v in mean)
    sane_std = len(std) == 3 and all(_number(v) and 1e-3 <= v <= 10 for v in std)
    if not (sane_mean and sane_std):
        raise PetsegError(
            f"{path}: normalization mean {list(mean)} std {list(std)} is not three finite means in (-10, 10) and "
            "three stds in [0.001, 10]"
        )
    if tta not in ("none", "hflip"):
        raise PetsegError(f"{path}: serving tta {tta!r} is not none or hflip")
    if not (_number(threshold) and 0 < threshold < 1):
        raise PetsegError(f"{path}: serving threshold {threshold!r} is not a number in (0, 1)")
