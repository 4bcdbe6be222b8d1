"""What a training run is and has done: its state, its files, and the fingerprint that makes a resume safe."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from petseg.config import Params
from petseg.models.checkpoint import model_payload
from petseg.schema import to_flat_dict
from petseg.tracking import library_versions

# history.csv: every epoch; validation.csv: the validated ones (no empty cells, which DVC's charts would draw as 0).
HISTORY_FIELDS = ("epoch", "train_loss", "lr", "augment_strength", "epoch_seconds", "images_per_second")
VALIDATION_FIELDS = ("epoch", "val_loss", "val_dice", "val_iou")


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_without_improvement: int = 0
    elapsed_seconds: float = 0.0  # training time so far (what a time budget counts)
    stopped_by: str = ""  # "", "early stop" or "time budget"

    def step_seconds(self, batch_size: int) -> float:
        """Seconds per step of ``batch_size`` (global) in the last epoch; 0 before the first."""
        return batch_size / self.history[-1]["images_per_second"] if self.history else 0.0


@dataclass(frozen=True)
class TrainPaths:
    best: Path  # models/<model>.pt
    last: Path  # models/<model>.last.pt


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def code_digest() -> str:
    """sha256 of petseg's own source: DVC re-runs a training stage when its code changed, and that run must train
    with the new code, not resume (and so return) the finished run of the old one."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_fingerprint(name: str, params: Params, meta: dict) -> str:
    """What a resumable run depends on; a different fingerprint means start over."""
    relevant = {
        "model": name,
        "config": asdict(params.train.model(name)),
        "common": asdict(params.train.common),  # params.resources (speed only) is not part of it
        "data": meta,
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Plain contiguous tensors in every checkpoint, also from a channels_last model.
    return {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for k, v in model.state_dict().items()
    }


def trained_model(name: str, params: Params, image_size: int, weights: dict, epoch: int) -> dict:
    """models/<model>.pt: the weights, how to feed and serve them (the checkpoint is the one source of truth for
    its TTA and threshold), the recipe that trained them and the libraries it ran with."""
    common, cfg = params.train.common, params.train.model(name)
    payload = model_payload(name, cfg.model_params(), image_size, weights, common.tta, common.threshold)
    recipe = to_flat_dict(common, "train.common.") | to_flat_dict(cfg, f"train.{name}.")
    return payload | {"epoch": epoch, "recipe": recipe, "environment": library_versions()}
