"""The datasets one training run reads: the train split augmented, the valid split as evaluation sees it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from petseg.config import AugmentConfig, ModelTrainConfig, TrainCommonConfig
from petseg.data.dataset import PreparedSplit
from petseg.data.device_augment import DeviceAugment, training_augmentation
from petseg.data.transforms import eval_transforms
from petseg.errors import PetsegError
from petseg.models import normalization
from petseg.training.distributed import Context


def training_datasets(prepared_dir: Path, name: str, cfg: ModelTrainConfig) -> tuple[PreparedSplit, PreparedSplit]:
    """(train set, valid set as evaluation sees it); the train set's augmentation is set per epoch
    (:func:`epoch_augmentation`). Too few samples is one line."""
    train_set = PreparedSplit(prepared_dir, "train")
    valid_set = PreparedSplit(prepared_dir, "valid", eval_transforms(*normalization(cfg.model_params())))
    if len(train_set) < cfg.batch_size or len(valid_set) == 0:
        raise PetsegError(
            f"{prepared_dir}: {len(train_set)} train / {len(valid_set)} valid samples, too few for "
            f"train.{name}.batch_size {cfg.batch_size}; check reports/prepare.json"
        )
    return train_set, valid_set


def augment_strength(augment: AugmentConfig, planned_epochs: float) -> float:
    """How strongly (0-1) a run of ``planned_epochs`` augments: a short run cannot afford to fit harder data.
    1 where nothing scales (augmentation off, or ``full_strength_epochs`` 0)."""
    if not augment.enabled or not augment.full_strength_epochs:
        return 1.0
    return min(1.0, planned_epochs / augment.full_strength_epochs)


def epoch_augmentation(
    train_set: PreparedSplit, cfg: ModelTrainConfig, common: TrainCommonConfig, size: int, planned_epochs: float
) -> tuple[float, DeviceAugment | None]:
    """(strength, batch augmentation for the device or None): augment ``train_set`` for the next epoch of a run of
    ``planned_epochs``, in its loader (sets its transform) or, with ``augment.on_device``, on the device."""
    strength = augment_strength(common.augment, planned_epochs)
    mean, std = normalization(cfg.model_params())
    train_set.transform, device_augment = training_augmentation(common.augment.scaled(strength), size, mean, std)
    return strength, device_augment


def downsized(images: torch.Tensor, masks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch at ``size``: photos antialiased, masks nearest (labels stay labels)."""
    images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    masks = F.interpolate(masks.float(), size=(size, size), mode="nearest").to(masks.dtype)
    return images, masks


def progressive_size(image_size: int, common: TrainCommonConfig, progress: float) -> int:
    """Progressive resizing: the smaller training size (a multiple of 32) while less than ``progressive_until`` of
    the training (``progress``, 0-1) has passed, else 0 (train at the prepared size)."""
    size = max(32, round(image_size * common.progressive_scale / 32) * 32)
    return size if progress < common.progressive_until and size < image_size else 0


def sharded_loader(dataset: Dataset, batch_size: int, context: Context, workers: int, pin_memory: bool) -> DataLoader:
    """In order, every ``world_size``-th sample from this process's rank on: each process scores its own share."""
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size))
    return DataLoader(shard, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory)
