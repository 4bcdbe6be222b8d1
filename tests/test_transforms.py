from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from petseg.config import AugmentConfig
from petseg.transforms import eval_transforms, train_transforms

MEAN = STD = (0.5, 0.5, 0.5)


def sample(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre L-shaped pet whose pixels are white exactly where the mask is 1."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left = rng.integers(4, size // 3, 2)
    mask[top : top + size // 2, left : left + size // 6] = 1
    mask[top + size // 3 : top + size // 2, left : left + size // 2] = 1
    image = np.repeat((mask * 255)[None], 3, axis=0)
    return tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy(mask)[None])


def pet_pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation and threshold: where the image says 'pet'."""
    return (image * 0.5 + 0.5).mean(0) > 0.4


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(),
        AugmentConfig(rotation=45.0, translate=0.2, crop_scale=(0.3, 1.0), hflip=0.5, color_jitter=0.0),
        AugmentConfig(rotation=0.0, translate=0.0, crop_scale=(1.0, 1.0), hflip=1.0, color_jitter=0.0),
    ],
    ids=["defaults", "strong-geometry", "flip-only"],
)
def test_image_and_mask_stay_aligned(cfg):
    transform = train_transforms(cfg, 64, MEAN, STD)
    torch.manual_seed(0)
    aligned, untransformed_mask = [], []
    for seed in range(20):
        image, mask = sample(seed=seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
        assert out_mask.shape == (1, 64, 64) and out_mask.dtype == torch.uint8
        assert set(out_mask.unique().tolist()) <= {0, 1, 255}  # nearest interpolation: no blended labels
        seen_as_pet = pet_pixels(out_image) & (out_mask[0] != 255)
        aligned.append(iou(seen_as_pet, out_mask[0] == 1))
        untransformed_mask.append(iou(seen_as_pet, mask[0] == 1))  # the reference report's bug
    # Only interpolation at the shape's edges separates image and mask (a thin shape at 64 px).
    assert min(aligned) > 0.8 and sum(aligned) / len(aligned) > 0.9
    if cfg.crop_scale != (1.0, 1.0):
        assert sum(untransformed_mask) / len(untransformed_mask) < 0.5  # the test would catch that bug


def test_flip_is_exact_and_colour_jitter_leaves_the_mask_alone():
    image, mask = sample()
    flipped_image, flipped_mask = train_transforms(
        AugmentConfig(rotation=0.0, translate=0.0, crop_scale=(1.0, 1.0), hflip=1.0, color_jitter=0.5), 64, MEAN, STD
    )(image, mask)
    assert torch.equal(flipped_mask, mask.flip(-1))
    assert torch.equal(pet_pixels(flipped_image), mask[0].flip(-1).bool())


def test_disabled_augmentation_is_only_normalisation():
    image, mask = sample()
    out_image, out_mask = train_transforms(AugmentConfig(enabled=False), 64, MEAN, STD)(image, mask)
    ref_image, ref_mask = eval_transforms(MEAN, STD)(image, mask)
    assert torch.equal(out_image, ref_image) and torch.equal(out_mask, mask) and torch.equal(ref_mask, mask)
    assert out_image.min() == -1.0 and out_image.max() == 1.0
