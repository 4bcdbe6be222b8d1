"""One pass of a model over a loader: per-image confusion counts and the mean loss (validation and evaluation)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader

from petseg.data.layout import IGNORE
from petseg.evaluation.metrics import confusion_counts
from petseg.progress import progress
from petseg.runtime import autocast_context


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    threshold: float,
    loss_fn: nn.Module | None = None,
    amp: str | bool = False,
    desc: str = "eval",
) -> tuple[torch.Tensor, float]:
    """Per-image confusion counts (N, 4) and the mean loss (NaN without ``loss_fn``)."""
    model.eval()
    # Kept on the device until the end: reading them per batch would sync a GPU on every batch.
    counts, loss_sum, seen = [], torch.zeros((), dtype=torch.float64, device=device), 0
    logit_threshold = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
    for images, masks in progress(loader, desc=desc, unit=" batch"):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).double() * len(images)
        counts.append(confusion_counts(logits.float() > logit_threshold, masks, IGNORE))
        seen += len(images)
    mean_loss = loss_sum.item() / seen if loss_fn is not None and seen else float("nan")
    return torch.cat(counts).cpu() if counts else torch.zeros(0, 4, dtype=torch.long), mean_loss
