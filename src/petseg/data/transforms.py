"""Augmentation presets: torchvision.transforms.v2 moves image and mask together.

The reference report rotated/cropped the image but not its mask; here every geometric op is applied
to a (tv_tensors.Image, tv_tensors.Mask) pair with identical parameters (masks always use nearest
interpolation in v2), while colour jitter and normalisation only touch the image.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from petseg.config import AugmentConfig
from petseg.data.layout import IGNORE

# Pixels that rotation/translation bring in from outside have no label: ignore them in loss and metrics.
FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}


def to_model_input(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]


def train_transforms(cfg: AugmentConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    ops: list[v2.Transform] = []
    if cfg.enabled:
        if cfg.crop_scale != (1.0, 1.0):
            ops.append(v2.RandomResizedCrop(size, scale=cfg.crop_scale, antialias=True))
        if cfg.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.rotation > 0 or cfg.translate > 0:
            ops.append(v2.RandomAffine(degrees=cfg.rotation, translate=(cfg.translate, cfg.translate), fill=FILL))
        if cfg.color_jitter > 0:
            strength = cfg.color_jitter
            ops.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    return v2.Compose(ops + to_model_input(mean, std))


def eval_transforms(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose(to_model_input(mean, std))
