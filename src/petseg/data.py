"""Datasets over the prepared uint8 arrays (memory-mapped: no JPEG is decoded during training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from petseg.errors import PetsegError
from petseg.prepare import read_split_csv


def read_meta(prepared_dir: Path) -> dict:
    path = prepared_dir / "meta.json"
    if not path.is_file():
        raise PetsegError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


class PreparedSplit(Dataset):
    """One split: (image, mask) pairs as tv_tensors, mask values 0/1/255 (ignore)."""

    def __init__(self, prepared_dir: Path, split: str, transform=None):
        try:
            self.images = np.load(prepared_dir / f"{split}_images.npy", mmap_mode="r")
            self.masks = np.load(prepared_dir / f"{split}_masks.npy", mmap_mode="r")
        except (OSError, ValueError) as err:
            raise PetsegError(f"{prepared_dir}: cannot read the {split} split ({err}); rerun prepare") from None
        self.rows = read_split_csv(prepared_dir / f"{split}.csv")
        if not len(self.images) == len(self.masks) == len(self.rows):
            raise PetsegError(f"{prepared_dir}: {split} arrays and list disagree in length; rerun prepare")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(self.masks[index]))[None])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
