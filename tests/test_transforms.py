from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import augment_config
from torchvision import tv_tensors

from petseg.data.device_augment import DeviceAugment
from petseg.data.transforms import eval_transforms, train_transforms

MEAN = STD = (0.5, 0.5, 0.5)


def in_loader(cfg, images, masks):
    """The loader preset, one sample at a time (what DataLoader workers run)."""
    transform = train_transforms(cfg, images.shape[-1], MEAN, STD)
    pairs = [transform(tv_tensors.Image(i), tv_tensors.Mask(m)) for i, m in zip(images, masks, strict=True)]
    return torch.stack([image for image, _ in pairs]), torch.stack([mask for _, mask in pairs])


def on_device(cfg, images, masks):
    """The whole batch at once, as training does with augment.on_device (here on the CPU)."""
    return DeviceAugment(cfg, MEAN, STD)(images, masks, torch.Generator().manual_seed(0))


AUGMENTERS = pytest.mark.parametrize("augment", [in_loader, on_device], ids=["loader", "device"])


def sample(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre L-shaped pet whose pixels are white exactly where the mask is 1."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left = rng.integers(4, size // 3, 2)
    mask[top : top + size // 2, left : left + size // 6] = 1
    mask[top + size // 3 : top + size // 2, left : left + size // 2] = 1
    image = np.repeat((mask * 255)[None], 3, axis=0)
    return torch.from_numpy(image), torch.from_numpy(mask)[None]


def batch(count: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [sample(seed=seed) for seed in range(count)]
    return torch.stack([image for image, _ in samples]), torch.stack([mask for _, mask in samples])


def pet_pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation and threshold: where the image says 'pet'."""
    return (image * 0.5 + 0.5).mean(0) > 0.4


def pet_pixels_batch(images: torch.Tensor) -> torch.Tensor:
    return (images * 0.5 + 0.5).mean(1) > 0.4


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@AUGMENTERS
@pytest.mark.parametrize(
    "cfg",
    [
        augment_config(),
        augment_config(rotation=45.0, translate=0.2, crop_scale=(0.3, 1.0), hflip=0.5, color_jitter=0.0),
        augment_config(rotation=0.0, translate=0.0, crop_scale=(1.0, 1.0), hflip=1.0, color_jitter=0.0),
    ],
    ids=["defaults", "strong-geometry", "flip-only"],
)
def test_image_and_mask_stay_aligned(augment, cfg):
    images, masks = batch()
    torch.manual_seed(0)
    out_images, out_masks = augment(cfg, images, masks)
    assert out_images.shape == (20, 3, 64, 64) and out_images.dtype == torch.float32
    assert out_masks.shape == (20, 1, 64, 64) and out_masks.dtype == torch.uint8
    assert set(out_masks.unique().tolist()) <= {0, 1, 255}  # nearest interpolation: no blended labels
    aligned, untransformed_mask = [], []
    for out_image, out_mask, mask in zip(out_images, out_masks, masks, strict=True):
        seen_as_pet = pet_pixels(out_image) & (out_mask[0] != 255)
        aligned.append(iou(seen_as_pet, out_mask[0] == 1))
        untransformed_mask.append(iou(seen_as_pet, mask[0] == 1))  # the reference report's bug
    # Only interpolation at the shape's edges separates image and mask (a thin shape at 64 px).
    assert min(aligned) > 0.8 and sum(aligned) / len(aligned) > 0.9
    if cfg.crop_scale != (1.0, 1.0):
        assert sum(untransformed_mask) / len(untransformed_mask) < 0.5  # the test would catch that bug
    if cfg.rotation or cfg.translate:
        outside = out_masks[:, 0] == 255
        assert outside.any()  # pixels brought in from outside carry no label
        if not cfg.color_jitter:
            assert torch.all(out_images.permute(1, 0, 2, 3)[:, outside] == -1.0)  # and are black


@AUGMENTERS
def test_flip_is_exact_and_colour_jitter_leaves_the_mask_alone(augment):
    images, masks = batch(4)
    cfg = augment_config(rotation=0.0, translate=0.0, crop_scale=(1.0, 1.0), hflip=1.0, color_jitter=0.5)
    flipped_images, flipped_masks = augment(cfg, images, masks)
    assert torch.equal(flipped_masks, masks.flip(-1))
    assert torch.equal(pet_pixels_batch(flipped_images), masks[:, 0].flip(-1).bool())
    assert flipped_images.min() >= -1.0 and flipped_images.max() <= 1.0


@AUGMENTERS
def test_disabled_augmentation_is_only_normalisation(augment):
    images, masks = batch(4)
    out_images, out_masks = augment(augment_config(enabled=False), images, masks)
    normalise = eval_transforms(MEAN, STD)
    pairs = [normalise(tv_tensors.Image(i), tv_tensors.Mask(m)) for i, m in zip(images, masks, strict=True)]
    torch.testing.assert_close(out_images, torch.stack([image for image, _ in pairs]), atol=1e-6, rtol=0)
    assert torch.equal(out_masks, masks) and torch.equal(torch.stack([mask for _, mask in pairs]), masks)
    assert out_images.min() == -1.0 and out_images.max() == 1.0


def test_device_augment_draws_from_its_generator():
    images, masks = batch(8)
    augment = DeviceAugment(augment_config(), MEAN, STD)
    first = augment(images, masks, torch.Generator().manual_seed(3))
    again = augment(images, masks, torch.Generator().manual_seed(3))
    other = augment(images, masks, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    # Each sample gets its own draw: identical inputs come out differently.
    same = images[:1].repeat(8, 1, 1, 1), masks[:1].repeat(8, 1, 1, 1)
    out_masks = augment(*same, torch.Generator().manual_seed(3))[1]
    assert len({tuple(m.flatten().tolist()) for m in out_masks}) == 8


def test_device_crop_zooms_in_like_the_loader_crop():
    """A centred square grows under random resized crop (the crop is smaller than the photo)."""
    masks = torch.zeros(16, 1, 64, 64, dtype=torch.uint8)
    masks[:, :, 24:40, 24:40] = 1
    images = masks.repeat(1, 3, 1, 1) * 255
    cfg = augment_config(hflip=0.0, rotation=0.0, translate=0.0, crop_scale=(0.25, 0.5), color_jitter=0.0)
    _, out_masks = on_device(cfg, images, masks)
    pet_fraction = (out_masks == 1).float().mean((1, 2, 3))
    assert torch.all(pet_fraction > masks.float().mean() * 1.5)  # area 1/16 seen through a crop of 1/4 .. 1/2


def test_scaled_augmentation_weakens_every_magnitude_but_the_flip():
    cfg = augment_config(hflip=0.5, rotation=20.0, crop_scale=(0.4, 0.8), translate=0.2, color_jitter=0.3)
    assert cfg.scaled(1.0) is cfg
    half = cfg.scaled(0.5)
    assert (half.hflip, half.rotation, half.translate) == (0.5, 10.0, 0.1)
    assert half.crop_scale == pytest.approx((0.7, 0.9)) and half.color_jitter == pytest.approx(0.15)
    none = cfg.scaled(0.0)
    assert (none.rotation, none.crop_scale, none.translate, none.color_jitter) == (0.0, (1.0, 1.0), 0.0, 0.0)
    assert none.hflip == 0.5


def test_augmentation_at_strength_0_without_flips_is_only_normalisation():
    images, masks = batch(4)
    cfg = augment_config(hflip=0.0).scaled(0.0)
    for augment in (on_device, in_loader):
        out_images, out_masks = augment(cfg, images, masks)
        assert torch.equal(out_masks, masks)
        torch.testing.assert_close(out_images, images.float() / 127.5 - 1, atol=1e-5, rtol=0)  # identity grid
