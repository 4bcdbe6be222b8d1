"""The Dataset over the prepared uint8 arrays (memory-mapped: no JPEG is decoded during training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from petseg.data.layout import images_path, list_path, masks_path, read_split_csv
from petseg.errors import PetsegError


class PreparedSplit(Dataset):
    """One split: (image, mask) pairs as tv_tensors, mask values 0/1/255 (ignore)."""

    def __init__(self, prepared_dir: Path, split: str, transform=None):
        try:
            self.images = np.load(images_path(prepared_dir, split), mmap_mode="r")
            self.masks = np.load(masks_path(prepared_dir, split), mmap_mode="r")
        except (OSError, ValueError) as err:
            raise PetsegError(f"{prepared_dir}: cannot read the {split} split ({err}); rerun prepare") from None
        self.rows = read_split_csv(list_path(prepared_dir, split))
        if not len(self.images) == len(self.masks) == len(self.rows):
            raise PetsegError(f"{prepared_dir}: {split} arrays and list disagree in length; rerun prepare")
        self.transform = transform
        self.where, self.split = prepared_dir, split

    def require_samples(self, purpose: str) -> PreparedSplit:
        """Refuse an empty split before any output is touched."""
        if not self.rows:
            raise PetsegError(
                f"{self.where}: the {self.split} split is empty, nothing to {purpose} (see reports/prepare.json)"
            )
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(self.masks[index]))[None])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
