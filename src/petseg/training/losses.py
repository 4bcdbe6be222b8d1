"""BCE-with-logits + soft Dice, blind to pixels labelled ``ignore_index`` (as segmentation_models_pytorch losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BCEDiceLoss(nn.Module):
    def __init__(
        self, bce_weight: float = 1.0, dice_weight: float = 1.0, ignore_index: int | None = None, smooth: float = 1.0
    ):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # stable under autocast
        valid = (target != self.ignore_index).float() if self.ignore_index is not None else torch.ones_like(logits)
        truth = (target == 1).float()
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        bce = (bce * valid).sum() / valid.sum().clamp_min(1.0)
        prob = torch.sigmoid(logits) * valid
        dims = tuple(range(1, logits.ndim))
        overlap = (prob * truth).sum(dims)
        total = prob.sum(dims) + (truth * valid).sum(dims)
        dice = 1.0 - (2.0 * overlap + self.smooth) / (total + self.smooth)
        return self.bce_weight * bce + self.dice_weight * dice.mean()
