"""`petseg bench baseline`: the reference report's data path (PIL per item, transforms v1) vs ours, same model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from petseg.bench import best_interleaved, extracted_archives, report_ratio
from petseg.bench.train import trainer_steps
from petseg.config import Params
from petseg.data.cache import prepare_dataset
from petseg.data.dataset import PreparedSplit
from petseg.data.lists import build_splits
from petseg.data.photos import TRIMAP_BACKGROUND
from petseg.data.transforms import train_transforms
from petseg.models import normalization
from petseg.training.trainer import Trainer


class ReferenceDataset(torch.utils.data.Dataset):
    """The reference report's data path: decode and resize every photo and trimap in __getitem__."""

    def __init__(self, images_dir: Path, annotations_dir: Path, names: list[str], size: int):
        from torchvision import transforms as v1

        self.images_dir, self.annotations_dir, self.names, self.size = images_dir, annotations_dir, names, size
        self.transform = v1.Compose(
            [
                v1.RandomHorizontalFlip(),
                v1.ColorJitter(0.2, 0.2, 0.2),
                v1.ToTensor(),
                v1.Normalize((0.5,) * 3, (0.5,) * 3),
            ]
        )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[index]
        image = Image.open(self.images_dir / f"{name}.jpg").convert("RGB").resize((self.size, self.size))
        trimap = Image.open(self.annotations_dir / "trimaps" / f"{name}.png").resize(
            (self.size, self.size), Image.Resampling.NEAREST
        )
        mask = torch.from_numpy((np.asarray(trimap) != TRIMAP_BACKGROUND).astype(np.uint8))[None]
        return self.transform(image), mask


def bench_baseline(source: Path, model_name: str, batch_size: int, steps: int, params: Params) -> dict:
    """Training img/s through the reference data path vs ours (prepared arrays + v2), same model and batch.

    ``params.prepare.image_size`` is the size; ``params.train.common`` the device, threads and augmentation.
    """
    trainer = Trainer(model_name, params)
    cfg, size = params.prepare, params.prepare.image_size
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = extracted_archives(source, Path(tmp))
        names = [e.name for e in build_splits(annotations_dir, cfg)["train"]][: steps * batch_size]
        prepare_dataset(images_dir, annotations_dir, Path(tmp) / "prepared", cfg, params.resources.workers)
        mean, std = normalization(trainer.model_params)
        augment = train_transforms(trainer.common.augment, size, mean, std)
        ours = PreparedSplit(Path(tmp) / "prepared", "train", augment)
        loaders = {
            "reference": DataLoader(
                ReferenceDataset(images_dir, annotations_dir, names, size),
                batch_size=batch_size,
                shuffle=True,
                num_workers=0,
            ),
            "petseg": DataLoader(
                torch.utils.data.Subset(ours, range(len(names))),
                batch_size=batch_size,
                shuffle=True,
                num_workers=trainer.workers,
            ),
        }

        trainer_steps(trainer, loaders["petseg"])  # warm-up
        reference_rate, petseg_rate = best_interleaved(
            lambda: trainer_steps(trainer, loaders["reference"]),
            lambda: trainer_steps(trainer, loaders["petseg"]),
            rounds=2,
        )
    return report_ratio(
        "baseline",
        ("petseg data path (prepared arrays, v2)", "petseg_img_s", petseg_rate),
        ("reference data path (PIL per item, v1, 0 workers)", "reference_img_s", reference_rate),
        "",
        {"model": model_name, "size": size, "batch_size": batch_size, "images": len(names)},
    )
