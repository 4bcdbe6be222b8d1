"""Segmentation metrics from per-image confusion counts, pixels labelled ``ignore_index`` excluded.

Rule for empty cases: any ratio whose denominator is 0 is 1.0 — nothing there to get wrong. So an
image whose mask and prediction are both empty scores Dice = IoU = 1.0, and precision is 1.0 when
nothing was predicted and nothing was missed.
"""

from __future__ import annotations

import torch

COUNT_NAMES = ("tp", "fp", "fn", "tn")


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


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num))


def per_image_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fp, fn, tn = counts.double().unbind(-1)
    return {
        "dice": safe_ratio(2 * tp, 2 * tp + fp + fn),
        "iou": safe_ratio(tp, tp + fp + fn),
        "accuracy": safe_ratio(tp + tn, tp + fp + fn + tn),
        "precision": safe_ratio(tp, tp + fp),
        "recall": safe_ratio(tp, tp + fn),
    }


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
