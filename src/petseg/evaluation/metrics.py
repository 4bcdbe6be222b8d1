"""Segmentation metrics from per-image confusion counts, pixels labelled ``ignore_index`` excluded.

Rule for empty cases: a ratio whose denominator is 0 scores 1.0 only when there was nothing to get wrong, and 0.0
otherwise. An image whose mask and prediction are both empty scores Dice = IoU = precision = recall = 1.0; an empty
prediction of an image that has a pet scores precision 0.0 (not a perfect 1.0: nothing it said was right, because it
said nothing), and a prediction on an image without a pet scores recall 0.0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Per-image (tp, fp, fn, tn) as int64 of shape (N, 4); ``pred`` bool, ``target`` 0/1 or ``ignore_index``."""
    pred = pred.reshape(pred.shape[0], -1).bool()
    target = target.reshape(target.shape[0], -1)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    truth = (target == 1) & valid
    pred = pred & valid
    tp = (pred & truth).sum(1)
    fp = (pred & ~truth).sum(1)
    fn = (~pred & truth).sum(1)
    tn = valid.sum(1) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).long()


def safe_ratio(num: torch.Tensor, den: torch.Tensor, when_empty: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``num / den``; where ``den`` is 0, ``when_empty`` (see the module's rule)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.as_tensor(when_empty, dtype=torch.float64))


def per_image_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fp, fn, tn = counts.double().unbind(-1)
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn),
        "iou": safe_ratio(tp, tp + fp + fn),
        "accuracy": safe_ratio(tp + tn, tp + fp + fn + tn),
        "precision": safe_ratio(tp, tp + fp, (fn == 0).double()),
        "recall": safe_ratio(tp, tp + fn, (fp == 0).double()),
    }


def degenerate_counts(counts: torch.Tensor) -> dict[str, int]:
    """Images whose prediction is empty (no pet anywhere) and images predicted pet everywhere."""
    tp, fp, fn, tn = counts.reshape(-1, 4).unbind(-1)
    return {"empty_predictions": int(((tp + fp) == 0).sum()), "full_predictions": int(((fn + tn) == 0).sum())}


def outline_band(target: torch.Tensor, width: int, ignore_index: int | None = None) -> torch.Tensor:
    """Pixels within ``width`` of the pet's outline, on both sides (N, 1, H, W bool): where models differ."""
    truth = (target == 1).float()
    kernel = 2 * width + 1
    grown = F.max_pool2d(truth, kernel, stride=1, padding=width)
    shrunk = -F.max_pool2d(-truth, kernel, stride=1, padding=width)
    band = grown != shrunk
    return band & (target != ignore_index) if ignore_index is not None else band


def bootstrap_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``values`` (seeded: the same numbers every run)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(counts: torch.Tensor) -> dict[str, float]:
    """Per-image means and dataset-level (pixels pooled) scores for a set of images."""
    counts = counts.reshape(-1, 4)
    if counts.shape[0] == 0:
        return {}
    per_image = per_image_scores(counts)
    pooled = per_image_scores(counts.sum(0, keepdim=True))
    out = {f"{name}_per_image": float(values.mean()) for name, values in per_image.items()}
    out |= {f"{name}_dataset": float(values[0]) for name, values in pooled.items()}
    out["images"] = int(counts.shape[0])
    return out
