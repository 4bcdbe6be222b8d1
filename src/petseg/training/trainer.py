"""The Trainer: model, optimizer, scheduler, scaler and loss built once; resumable, deterministic on CPU.

Each epoch re-seeds the global RNG and the shuffle generator from (seed, epoch). So a run resumed
from ``<model>.last.pt`` replays exactly the augmentations and batch order of an uninterrupted run,
and ends with identical metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from petseg.config import Params
from petseg.data.dataset import PreparedSplit
from petseg.data.device_augment import BatchTransform, training_augmentation
from petseg.data.layout import IGNORE, read_meta
from petseg.data.transforms import eval_transforms
from petseg.errors import PetsegError
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import summarize
from petseg.models import build_model, model_from_weights, normalization
from petseg.models.checkpoint import load_checkpoint, model_payload, non_finite_count, save_checkpoint
from petseg.progress import progress
from petseg.runtime import (
    autocast_context,
    configure_threads,
    loader_workers,
    make_deterministic,
    resolve_device,
    seed_everything,
)
from petseg.training.distributed import Context, per_process_batch
from petseg.training.losses import BCEDiceLoss
from petseg.training.state import TrainPaths, TrainState, cpu_state_dict, run_fingerprint


def _training_device(name: str, context: Context) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and context.active:
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


class Trainer:
    """One model's training per ``params``. Under torchrun each process trains on its shard of every global batch
    (DistributedSampler, ``batch_size`` split evenly), metrics are reduced over all processes, only rank 0 writes."""

    def __init__(self, name: str, params: Params, context: Context | None = None):
        self.name, self.params, self.context = name, params, context or Context()
        self.common, self.cfg = params.train.common, params.train.model(name)
        configure_threads(self.common.threads)
        make_deterministic()
        self.device = _training_device(self.common.device, self.context)
        seed_everything(self.common.seed)
        self.model_params = self.cfg.model_params()
        self.model = build_model(name, **self.model_params).to(self.device)
        if self.common.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        ddp_devices = [self.device] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(self.model, device_ids=ddp_devices) if self.context.active else self.model
        self.forward = torch.compile(wrapped) if self.common.compile else wrapped
        self.loss_fn = BCEDiceLoss(self.common.loss.bce_weight, self.common.loss.dice_weight, ignore_index=IGNORE)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.maximize = self.common.select_by == "dice"
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="max" if self.maximize else "min",
            factor=self.cfg.plateau_factor,
            patience=self.cfg.plateau_patience,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.common.amp == "fp16")
        self.state = TrainState()
        self.best_weights = cpu_state_dict(self.model)
        self.batch_size = per_process_batch(self.cfg.batch_size, self.context, f"train.{name}.batch_size")
        self.workers = loader_workers(self.common.num_workers, self.device)
        self.image_size = 0  # known once fit() reads the prepared data
        self.saved_epoch = 0  # the epoch of this run's resume point on disk; 0: none yet

    def say(self, message: str) -> None:
        if self.context.is_main:
            print(f"train_{self.name}: {message}")

    def train_one_epoch(
        self, loader: Iterable, epoch: int = 0, augment: BatchTransform | None = None, check_every: int = 0
    ) -> tuple[float, int]:
        """One pass over ``loader``; returns (loss sum, images) over every process.

        ``augment`` runs on the device, on the batches as the loader ships them (see :mod:`petseg.data.device_augment`).
        The loss is summed on the device and read every ``check_every`` steps (default: every step on a CPU, every
        25th on a GPU, where a host sync per step would stall the queue of launched kernels); a non-finite sum then
        stops training in every process.
        """
        self.model.train()
        check_every = check_every or (1 if self.device.type == "cpu" else 25)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, checked, step = 0, 0, 0
        bar = progress(loader, desc=f"{self.name} epoch {epoch}", unit=" batch", quiet=not self.context.is_main)
        for step, (images, masks) in enumerate(bar, start=1):
            images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
            if augment is not None:
                images, masks = augment(images, masks)
            if self.common.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(self.device, self.common.amp):
                loss = self.loss_fn(self.forward(images), masks)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach().double() * len(images)
            seen += len(images)
            if step % check_every == 0:
                self._check_loss(loss_sum.item(), seen, epoch, checked, step, bar)
                checked = step
        if step > checked:
            self._check_loss(loss_sum.item(), seen, epoch, checked, step, bar)
        total_loss, total_seen = self.context.sum(loss_sum.item(), seen)
        return total_loss, int(total_seen)

    def _check_loss(self, value: float, seen: int, epoch: int, checked: int, step: int, bar) -> None:
        # Every process must agree to stop, or the others would wait forever in the next all-reduce.
        if not self.context.all_true(math.isfinite(value)):
            what = value if not math.isfinite(value) else "non-finite in another process"
            steps = f"step {step}" if step == checked + 1 else f"steps {checked + 1}-{step}"
            raise PetsegError(f"loss became {what} at epoch {epoch}, {steps}")
        bar.set_postfix(loss=f"{value / seen:.4f}")

    def validate(self, loader: DataLoader) -> dict[str, float]:
        """Validation loss and scores, reduced over every process."""
        counts, val_loss = evaluate_loader(
            self.model, loader, self.device, 0.5, self.loss_fn, self.common.amp, desc="validate"
        )
        (val_loss_sum,) = self.context.sum(val_loss * len(counts) if len(counts) else 0.0)
        counts = self.context.gather(counts)
        scores = summarize(counts)
        dice, iou = scores["dice_per_image"], scores["iou_per_image"]
        return {"val_loss": val_loss_sum / len(counts), "val_dice": dice, "val_iou": iou}

    def record(self, row: dict[str, float]) -> None:
        """Step the scheduler on the epoch's validation result and keep the best weights."""
        score = row["val_dice"] if self.maximize else -row["val_loss"]
        self.scheduler.step(row["val_dice"] if self.maximize else row["val_loss"])
        self.state.epoch = row["epoch"]
        self.state.history.append(row)
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, row["epoch"]
            self.state.epochs_without_improvement = 0
            self.best_weights = cpu_state_dict(self.model)
        else:
            self.state.epochs_without_improvement += 1

    def _stop_if_diverged(self, row: dict[str, float], paths: TrainPaths) -> None:
        """Never carry on from (or save) non-finite weights or a non-finite validation loss."""
        bad, total = non_finite_count(self.model.state_dict())
        if bad:
            raise self._diverged(f"{bad} of {total} weights became NaN or infinite at epoch {row['epoch']}", paths)
        if not math.isfinite(row["val_loss"]):
            raise self._diverged(f"validation loss became {row['val_loss']} at epoch {row['epoch']}", paths)

    def _diverged(self, what: str, paths: TrainPaths) -> PetsegError:
        kept = (
            f"Last good checkpoint kept: {paths.last} (epoch {self.saved_epoch})"
            if self.saved_epoch
            else "No checkpoint of this run was written"
        )
        return PetsegError(f"train_{self.name}: {what}; lower train.{self.name}.lr or check the data. {kept}")

    def should_stop(self) -> bool:
        patience = self.cfg.early_stop_patience
        if patience and self.state.epochs_without_improvement >= patience:
            self.say(f"early stop, no improvement for {self.state.epochs_without_improvement} epochs")
            return True
        return False

    def resume(self, path: Path, fingerprint: str) -> None:
        """Continue from a resume point of the very same run; anything else starts over."""
        if not path.exists():
            return
        saved = load_checkpoint(path)
        if saved.get("fingerprint") != fingerprint:
            self.say(f"{path} is from other params or data; starting over")
            return
        self.model.load_state_dict(saved["state_dict"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["train_state"])
        self.best_weights = saved["best_state_dict"]
        self.saved_epoch = self.state.epoch
        self.say(f"resuming after epoch {self.state.epoch} from {path}")

    def save_resume_point(self, path: Path, fingerprint: str) -> None:
        save_checkpoint(
            path,
            {
                "fingerprint": fingerprint,
                "state_dict": cpu_state_dict(self.model),
                "best_state_dict": self.best_weights,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "train_state": asdict(self.state),
            },
        )
        self.saved_epoch = self.state.epoch

    def _datasets(self, prepared_dir: Path, size: int) -> tuple[PreparedSplit, DataLoader, BatchTransform | None]:
        mean, std = normalization(self.model_params)
        train_transform, device_augment = training_augmentation(self.common.augment, size, mean, std)
        train_set = PreparedSplit(prepared_dir, "train", train_transform)
        valid_set = PreparedSplit(prepared_dir, "valid", eval_transforms(mean, std))
        if len(train_set) < self.cfg.batch_size or len(valid_set) == 0:
            raise PetsegError(
                f"{prepared_dir}: {len(train_set)} train / {len(valid_set)} valid samples, too few for "
                f"train.{self.name}.batch_size {self.cfg.batch_size}; check reports/prepare.json"
            )
        rank, world = self.context.rank, self.context.world_size
        valid_shard = Subset(valid_set, range(rank, len(valid_set), world))
        pin = self.device.type == "cuda"
        valid_loader = DataLoader(valid_shard, batch_size=self.batch_size, num_workers=self.workers, pin_memory=pin)
        return train_set, valid_loader, device_augment

    def fit(self, prepared_dir: Path, paths: TrainPaths, tracker=None) -> TrainState:
        """Train to ``epochs`` (or an early stop), checkpointing every epoch; writes the best model at the end."""
        meta = read_meta(prepared_dir)
        self.image_size = meta["image_size"]
        train_set, valid_loader, device_augment = self._datasets(prepared_dir, self.image_size)
        fingerprint = run_fingerprint(self.name, self.params, meta)
        self.resume(paths.last, fingerprint)
        # The same sampler with one process or many: the global batches are the same sets of images either way.
        sampler = DistributedSampler(
            train_set, self.context.world_size, self.context.rank, shuffle=True, seed=self.common.seed, drop_last=True
        )
        for epoch in range(self.state.epoch + 1, self.cfg.epochs + 1):
            if self.should_stop():
                break
            started = time.perf_counter()
            # Per-epoch seeds: a resumed run replays exactly the augmentations of an uninterrupted one.
            epoch_seed = self.common.seed * 100_003 + epoch * 1_009 + self.context.rank
            torch.manual_seed(epoch_seed)
            sampler.set_epoch(epoch)
            loader = DataLoader(
                train_set,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(epoch_seed),
            )
            augment = device_augment.seeded(epoch_seed, self.device) if device_augment else None
            try:
                loss_sum, seen = self.train_one_epoch(loader, epoch, augment)
            except PetsegError as err:
                raise self._diverged(str(err), paths) from None
            train_seconds = time.perf_counter() - started
            row = {"epoch": epoch, "train_loss": loss_sum / seen} | self.validate(valid_loader)
            self._stop_if_diverged(row, paths)
            row |= {"lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started}
            row["images_per_second"] = seen / train_seconds
            self.record(row)
            if self.context.is_main:
                self.save_resume_point(paths.last, fingerprint)
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            self.say(self._epoch_line(row))
        # Written once at the end (a resumed or already finished run too): its presence means a finished run.
        if self.context.is_main:
            payload = model_payload(self.name, self.model_params, meta["image_size"], self.best_weights)
            save_checkpoint(paths.best, payload | {"epoch": self.state.best_epoch})
        self.context.barrier()
        return self.state

    def best_model(self) -> nn.Module:
        """The best epoch's weights in a fresh eval-mode CPU model (no DDP or compile wrapper)."""
        return model_from_weights(self.name, self.model_params, self.best_weights)

    def example_input(self) -> np.ndarray:
        return np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32)

    def _epoch_line(self, row: dict[str, float]) -> str:
        return (
            f"epoch {row['epoch']}/{self.cfg.epochs} train_loss {row['train_loss']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_dice {row['val_dice']:.4f} val_iou {row['val_iou']:.4f} "
            f"lr {row['lr']:.2e} {row['epoch_seconds']:.1f}s {row['images_per_second']:.1f} img/s"
            + (" *best" if self.state.best_epoch == row["epoch"] else "")
        )
