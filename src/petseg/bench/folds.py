"""K-fold cross-validation over the trainval photos, for tuning a recipe on data its reported test score never sees.

Fold ``k`` is a prepared-data folder like ``data/prepared``: its ``test`` split is the k-th of K disjoint parts of the
trainval photos (train + valid, assigned by a seeded shuffle of the names), its ``train`` and ``valid`` splits are the
other photos, 9:1 as prepare splits them. The official test split is not in it at all."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from petseg.data.layout import (
    CSV_FIELDS,
    images_path,
    list_path,
    masks_path,
    meta_path,
    read_meta,
    read_split_csv,
    write_split_csv,
)
from petseg.errors import PetsegError


def fold_names(names: list[str], folds: int, seed: int) -> list[list[str]]:
    """``names`` in ``folds`` disjoint parts of near-equal size by a seeded shuffle: the same names, the same parts."""
    if not 2 <= folds <= len(names):
        raise PetsegError(f"--folds {folds}: needs 2 to {len(names)} (the trainval photos)")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return [sorted(order[k::folds]) for k in range(folds)]


def write_fold(prepared: Path, out: Path, folds: int, k: int, seed: int, valid_fraction: float) -> Path:
    """Fold ``k`` of ``prepared``'s trainval photos as a prepared-data folder at ``out``."""
    rows, images, masks = [], [], []
    for split in ("train", "valid"):
        rows += read_split_csv(list_path(prepared, split))
        images.append(np.load(images_path(prepared, split), mmap_mode="r"))
        masks.append(np.load(masks_path(prepared, split), mmap_mode="r"))
    all_images, all_masks = np.concatenate(images), np.concatenate(masks)
    held_out = set(fold_names([row["name"] for row in rows], folds, seed)[k])
    rest = [i for i, row in enumerate(rows) if row["name"] not in held_out]
    random.Random(seed + k).shuffle(rest)
    n_valid = max(1, round(len(rest) * valid_fraction))
    members = {
        "train": sorted(rest[n_valid:]),
        "valid": sorted(rest[:n_valid]),
        "test": [i for i, row in enumerate(rows) if row["name"] in held_out],
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, index in members.items():
        np.save(images_path(out, split), all_images[index])
        np.save(masks_path(out, split), all_masks[index])
        write_split_csv(list_path(out, split), [tuple(rows[i][f] for f in CSV_FIELDS[1:]) for i in index])
    meta = read_meta(prepared) | {"counts": {split: len(index) for split, index in members.items()}}
    meta["split_lists"] = f"fold {k + 1} of {folds}, seed {seed}"
    meta_path(out).write_text(json.dumps(meta, indent=2))
    return out
