"""One pass of a model over a loader: per-image confusion counts and the mean loss (validation and evaluation)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from petseg.data.layout import IGNORE
from petseg.evaluation.metrics import confusion_counts, outline_band
from petseg.models import FlipAveraged
from petseg.progress import progress
from petseg.runtime import autocast_context


@dataclass(frozen=True)
class PassResult:
    counts: torch.Tensor  # (N, 4) per-image confusion counts
    band_counts: torch.Tensor  # (N, 4) the same, restricted to the band around the outline (zeros without one)
    mean_loss: float  # NaN without a loss function
    seconds: float  # wall time of the pass (the model card's evaluation speed)
    plain_counts: torch.Tensor | None = None  # with flip TTA, the counts of the network alone (the TTA effect)


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    threshold: float,
    loss_fn: nn.Module | None = None,
    amp: str | bool = False,
    desc: str = "eval",
    boundary_px: int = 0,
) -> PassResult:
    """Per-image confusion counts, overall and (``boundary_px`` > 0) near the outline, and the mean loss. Test-time
    augmentation is part of ``model`` (:func:`petseg.models.with_tta`); a flip-averaged model's plain half is scored
    too, in the same pass."""
    model.eval()
    started = time.perf_counter()
    # Kept on the device until the end: reading them per batch would sync a GPU on every batch.
    counts, bands, plain_counts = [], [], []
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    for images, masks in progress(loader, desc=desc, unit=" batch"):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits, plain = model.with_plain(images) if isinstance(model, FlipAveraged) else (model(images), None)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).double() * len(images)
        predicted = torch.sigmoid(logits.float()) > threshold
        counts.append(confusion_counts(predicted, masks, IGNORE))
        if plain is not None:
            plain_counts.append(confusion_counts(torch.sigmoid(plain.float()) > threshold, masks, IGNORE))
        if boundary_px:
            band_masks = torch.where(outline_band(masks, boundary_px, IGNORE), masks, IGNORE)
            bands.append(confusion_counts(predicted, band_masks, IGNORE))
        seen += len(images)
    mean_loss = loss_sum.item() / seen if loss_fn is not None and seen else float("nan")
    empty = torch.zeros(0, 4, dtype=torch.long)
    all_counts = torch.cat(counts).cpu() if counts else empty
    band_counts = torch.cat(bands).cpu() if bands else torch.zeros_like(all_counts)
    plain = torch.cat(plain_counts).cpu() if plain_counts else None
    return PassResult(all_counts, band_counts, mean_loss, time.perf_counter() - started, plain)
