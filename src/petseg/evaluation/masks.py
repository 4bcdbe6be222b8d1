"""Masks at a photo's own size and overlays, in NumPy: what every backend's probabilities become."""

from __future__ import annotations

import numpy as np

STRIP_ROWS = 256  # output rows resized at a time: a 12000 x 12000 mask never exists as float32 (576 MB)


def _bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low index, high index, weight of high) per output position: PyTorch's bilinear, align_corners=False, in
    float32 as its CPU kernel computes them."""
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    low = source.astype(np.int64)
    return low, np.minimum(low + 1, size_in - 1), (source - low.astype(np.float32)).astype(np.float32)


def mask_at_size(probability: np.ndarray, width: int, height: int, threshold: float) -> np.ndarray:
    """Resize a probability map to (height, width) bilinearly (align_corners=False), then threshold: uint8 0/255.

    Separable and in strips of output rows: the width pass once, then the height pass strip by strip; memory stays
    near the size of the uint8 mask itself.
    """
    probability = np.asarray(probability, dtype=np.float32)
    low, high, weight = _bilinear_taps(probability.shape[1], width)
    rows = (np.float32(1) - weight) * probability[:, low] + weight * probability[:, high]
    low, high, weight = _bilinear_taps(probability.shape[0], height)
    mask = np.empty((height, width), dtype=np.uint8)
    for start in range(0, height, STRIP_ROWS):
        stop = min(start + STRIP_ROWS, height)
        w = weight[start:stop, None]
        strip = (np.float32(1) - w) * rows[low[start:stop]] + w * rows[high[start:stop]]
        mask[start:stop] = np.where(strip > threshold, 255, 0)
    return mask


def shrunk(where: np.ndarray, steps: int) -> np.ndarray:
    """The boolean HxW ``where`` eroded ``steps`` times by its 4 neighbours, in NumPy: boolean shifts, much cheaper
    than the max-pool erosion of `metrics.outline_band` on a 2048 px overlay, and no PyTorch."""
    inner = where
    for _ in range(steps):
        step = inner.copy()
        step[1:] &= inner[:-1]
        step[:-1] &= inner[1:]
        step[:, 1:] &= inner[:, :-1]
        step[:, :-1] &= inner[:, 1:]
        inner = step
    return inner


def outline(where: np.ndarray, thickness: int) -> np.ndarray:
    """The pixels of ``where`` within ``thickness`` pixels of its edge."""
    return where & ~shrunk(where, thickness)


def overlay(image: np.ndarray, where: np.ndarray, color: tuple[int, int, int], alpha: float = 0.35) -> np.ndarray:
    """Tint ``image`` (HxWx3 uint8) where the boolean HxW ``where`` is set, and draw its edge in full ``color``
    with a dark rim, so the outline stays legible on fur of any colour."""
    out = image.astype(np.float32)
    out[where] = (1 - alpha) * out[where] + alpha * np.asarray(color, dtype=np.float32)
    thickness = max(1, round(max(where.shape) / 160))
    line = shrunk(where, thickness)
    out[where & ~shrunk(line, thickness)] = (20, 20, 20)  # the rim: the next ``thickness`` pixels inwards
    out[where & ~line] = color
    return out.astype(np.uint8)


# Green truth; blue prediction: the complement of the orange and brown fur most pets have.
TRUTH_COLOR, PRED_COLOR = (40, 220, 70), (40, 140, 255)
