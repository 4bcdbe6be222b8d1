"""Augmentation of whole batches on the training device, for when loader workers cannot keep up with a GPU.

The same random ops as the loader preset (:mod:`petseg.data.transforms`), drawn per sample. Crop, flip,
rotation and translation compose into one affine map per sample, and image and mask are sampled
through the same grid: they cannot drift apart, and the image is interpolated once instead of three
times. Colour jitter touches the image only. The loader then ships uint8 tensors, a quarter of the
bytes of float32 to copy to the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from petseg.config import AugmentConfig
from petseg.data.layout import IGNORE
from petseg.data.transforms import train_transforms

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_ASPECT = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's default aspect-ratio range
_DRAWS = 11  # random numbers per sample: a fixed count keeps every batch's stream aligned

# (images, masks) -> (images, masks), on a whole batch
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DeviceAugment:
    """uint8 image (N, 3, H, W) and mask (N, 1, H, W) batches -> normalised float32 images, augmented masks.

    Works on any device; pass a ``generator`` on that device for reproducible draws.
    """

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        self.cfg = cfg
        self._constants_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._constants = (
            torch.tensor(mean).view(1, -1, 1, 1),
            torch.tensor(std).view(1, -1, 1, 1),
            torch.tensor(_GRAY).view(1, 3, 1, 1),
        )

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, std and gray weights on ``device``, copied there once (a copy per batch would stall the GPU)."""
        if device not in self._constants_on:
            self._constants_on[device] = tuple(t.to(device) for t in self._constants)
        return self._constants_on[device]

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.float() / 255
        if self.cfg.enabled:
            draws = torch.rand(len(images), _DRAWS, generator=generator, device=images.device)
            grid = F.affine_grid(self._affine(draws[:, :8]), list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            # Labels shifted by one so that 0 after sampling means "outside the photo": no label there.
            sampled = F.grid_sample(masks.float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            masks = torch.where(sampled == 0, IGNORE, sampled - 1).to(torch.uint8)
            if self.cfg.color_jitter > 0:
                images = self._jitter(images, draws[:, 8:])
        mean, std, _ = self._on(images.device)
        return (images - mean) / std, masks

    def seeded(self, seed: int, device: torch.device) -> BatchTransform:
        """This augmentation drawing from its own generator on ``device``: the same ``seed``, the same batches."""
        return functools.partial(self, generator=torch.Generator(device=device).manual_seed(seed))

    def _affine(self, draws: torch.Tensor) -> torch.Tensor:
        """Per sample, the map from output to input coordinates (normalised to [-1, 1]), shape (N, 2, 3).

        As the loader preset: crop a random area and aspect, flip it, then rotate and shift the result.
        """
        cfg = self.cfg
        scale_draw, aspect_draw, cx_draw, cy_draw, flip_draw, angle_draw, *shift_draws = draws.unbind(1)
        if cfg.crop_scale == (1.0, 1.0):
            width = height = torch.ones_like(scale_draw)
        else:
            low, high = cfg.crop_scale
            area = low + (high - low) * scale_draw
            aspect = torch.exp(_ASPECT[0] + (_ASPECT[1] - _ASPECT[0]) * aspect_draw)
            width, height = torch.sqrt(area * aspect).clamp(max=1), torch.sqrt(area / aspect).clamp(max=1)
        centre = torch.stack([(1 - width) * (2 * cx_draw - 1), (1 - height) * (2 * cy_draw - 1)], 1)
        flip = torch.where(flip_draw < cfg.hflip, -1.0, 1.0)
        angle = torch.deg2rad(cfg.rotation * (2 * angle_draw - 1))
        shift = 2 * cfg.translate * (2 * torch.stack(shift_draws, 1) - 1)  # v2: up to translate * size
        cos, sin = torch.cos(angle), torch.sin(angle)
        unrotate = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # R(-angle)
        crop = torch.diag_embed(torch.stack([width * flip, height], 1))
        linear = crop @ unrotate
        offset = centre - (linear @ shift.unsqueeze(2)).squeeze(2)
        return torch.cat([linear, offset.unsqueeze(2)], 2)

    def _jitter(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation factors uniform in [1 - s, 1 + s], as v2.ColorJitter."""
        strength = self.cfg.color_jitter
        brightness, contrast, saturation = (1 + strength * (2 * draws - 1)).view(-1, 3, 1, 1, 1).unbind(1)
        gray_weights = self._on(images.device)[2]
        images = (images * brightness).clamp(0, 1)
        mean_gray = (images * gray_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        images = ((images - mean_gray) * contrast + mean_gray).clamp(0, 1)
        gray = (images * gray_weights).sum(1, keepdim=True)
        return ((images - gray) * saturation + gray).clamp(0, 1)


def training_augmentation(
    cfg: AugmentConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Callable | None, DeviceAugment | None]:
    """(loader's per-sample transform, device's batch augmentation): ``cfg.on_device`` picks one, the other is None.

    Augmenting on the device, the loader ships the cached uint8 arrays untouched.
    """
    if cfg.on_device:
        return None, DeviceAugment(cfg, mean, std)
    return train_transforms(cfg, size, mean, std), None
