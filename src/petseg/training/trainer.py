"""The Trainer: model, optimizer, scheduler, scaler and loss built once; resumable, deterministic on CPU.

Each epoch re-seeds the global RNG and the shuffle generator from (seed, epoch). So a run resumed
from ``<model>.last.pt`` replays exactly the augmentations and batch order of an uninterrupted run,
and ends with identical metrics.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from petseg import runtime
from petseg.config import Params
from petseg.data.dataset import PreparedSplit
from petseg.data.device_augment import BatchTransform
from petseg.data.layout import IGNORE, read_meta
from petseg.errors import PetsegError
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import degenerate_counts, summarize
from petseg.models import build_model, model_from_weights
from petseg.models.checkpoint import non_finite_count, save_checkpoint
from petseg.progress import progress, progress_line
from petseg.training.distributed import Context, per_process_batch, place_model, training_device
from petseg.training.loaders import downsized, epoch_augmentation, progressive_size, sharded_loader, training_datasets
from petseg.training.losses import BCEDiceLoss
from petseg.training.optim import EpochPlateau, WarmupCosine, build_optimizer, build_schedule
from petseg.training.reports import epoch_line
from petseg.training.resume import ResumePoint
from petseg.training.state import TrainPaths, TrainState, cpu_state_dict, run_fingerprint, trained_model


class Trainer:
    """One model's training per ``params``. Under torchrun each process trains on its shard of every global batch
    (DistributedSampler, ``batch_size`` split evenly), metrics are reduced over all processes, only rank 0 writes."""

    def __init__(self, name: str, params: Params, context: Context | None = None):
        self.name, self.params, self.context = name, params, context or Context()
        self.common, self.cfg = params.train.common, params.train.model(name)
        runtime.configure_threads(params.resources.threads)
        runtime.make_deterministic()
        self.device = training_device(self.common.device, self.context)
        runtime.seed_everything(self.common.seed)
        self.model_params = self.cfg.model_params()
        self.model, self.forward = place_model(
            build_model(name, **self.model_params), self.device, self.context, self.common
        )
        self.loss_fn = BCEDiceLoss(self.common.loss.bce_weight, self.common.loss.dice_weight, ignore_index=IGNORE)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.maximize = self.common.select_by != "loss"
        self.schedule: WarmupCosine | EpochPlateau | None = None  # built by fit(), which knows the steps per epoch
        self.budget_s = self.common.max_minutes * 60
        self._epoch_started = time.perf_counter()
        self.amp = runtime.native_amp(self.common.amp, self.device)  # "auto" resolved once, for this device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.state = TrainState()
        self.best_weights = cpu_state_dict(self.model)
        self.batch_size = per_process_batch(self.cfg.batch_size, self.context, f"train.{name}.batch_size")
        self.workers = runtime.loader_workers(params.resources.num_workers, self.device)
        self.pin_memory = self.device.type == "cuda"
        self.image_size = 0  # known once fit() reads the prepared data
        self.resume_point: ResumePoint | None = None  # made by fit(), which knows the run's fingerprint
        self.train_size = 0  # progressive resizing: the size batches are trained at this epoch; 0 = as they come

    def say(self, message: str) -> None:
        if self.context.is_main:
            progress_line(f"train_{self.name}: {message}")

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
        pace = self.state.step_seconds(self.cfg.batch_size)
        bar = progress(loader, desc=f"{self.name} epoch {epoch}", unit=" batch", quiet=not self.context.is_main)
        for step, (images, masks) in enumerate(bar, start=1):
            images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
            if augment is not None:
                images, masks = augment(images, masks)
            if self.train_size and images.shape[-1] != self.train_size:
                images, masks = downsized(images, masks, self.train_size)
            if self.common.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with runtime.autocast_context(self.device, self.amp):
                loss = self.loss_fn(self.forward(images), masks)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # The time the processes agreed at the epoch's start, plus the steps at the last epoch's pace: each
            # process's own clock would give each its own learning rate, and the replicas would drift apart.
            if self.schedule is not None:
                self.schedule.step(self.state.elapsed_seconds + step * pace)
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

    def validate(self, loader: DataLoader, epoch: int = 0) -> dict[str, float]:
        """Validation loss and scores, reduced over every process; warns when the model predicts no pet at all."""
        cut = self.common.threshold
        result = evaluate_loader(self.model, loader, self.device, cut, self.loss_fn, self.amp, desc="validate")
        (val_loss_sum,) = self.context.sum(result.mean_loss * len(result.counts) if len(result.counts) else 0.0)
        counts = self.context.gather(result.counts)
        empty = degenerate_counts(counts)["empty_predictions"]
        if empty * 2 > len(counts):
            self.say(f"warning: epoch {epoch}: no pet predicted on {empty} of {len(counts)} validation images")
        scores = summarize(counts)
        dice, iou = scores["dice_per_image"], scores["iou_per_image"]
        return {"val_loss": val_loss_sum / len(counts), "val_dice": dice, "val_iou": iou}

    def record(self, row: dict[str, float]) -> None:
        """Add the epoch to the history; after a validation, step the scheduler on it and keep the best weights."""
        self.state.epoch = row["epoch"]
        self.state.elapsed_seconds += row["epoch_seconds"]
        self.state.history.append(row)
        if "val_dice" not in row:  # only validated epochs compete (the last epoch always is one)
            return
        score = {"dice": row["val_dice"], "loss": -row["val_loss"], "last": row["epoch"]}[self.common.select_by]
        self.schedule.epoch_end(row["val_loss"] if self.common.select_by == "loss" else row["val_dice"])
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
        if not math.isfinite(row.get("val_loss", 0.0)):
            raise self._diverged(f"validation loss became {row['val_loss']} at epoch {row['epoch']}", paths)

    def _diverged(self, what: str, paths: TrainPaths) -> PetsegError:
        kept = (
            f"Last good checkpoint kept: {paths.last} (epoch {self.resume_point.saved_epoch})"
            if self.resume_point is not None and self.resume_point.saved_epoch
            else "No checkpoint of this run was written"
        )
        return PetsegError(f"train_{self.name}: {what}; lower train.{self.name}.lr or check the data. {kept}")

    def budget_spent(self) -> bool:
        """Whether training so far (this epoch's included) crossed ``max_minutes``. Every process must agree, or the
        others would wait forever in the next all-reduce."""
        elapsed = self.state.elapsed_seconds + time.perf_counter() - self._epoch_started
        return not self.context.all_true(not self.budget_s or elapsed < self.budget_s)

    def should_stop(self) -> bool:
        if self.state.stopped_by == "time budget":  # set by the epoch that crossed it (in this run or a resumed one)
            spent = f"{self.state.elapsed_seconds / 60:.1f} of {self.common.max_minutes:.1f} minutes"
            self.say(f"time budget reached: {spent}, {self.state.epoch} epochs")
            return True
        patience = self.cfg.early_stop_patience
        if patience and self.state.epochs_without_improvement >= patience:
            self.say(f"early stop, no improvement in {self.state.epochs_without_improvement} validations")
            self.state.stopped_by = "early stop"
            return True
        return False

    def _resumable(self) -> dict:
        parts = {"state_dict": self.model, "optimizer": self.optimizer}
        return parts | {"scheduler": self.schedule, "scaler": self.scaler}

    def resume(self, point: ResumePoint) -> None:
        """Continue from a resume point of the very same run; anything else starts over."""
        saved, message = point.load()
        if message:
            self.say(message)
        if saved is None:
            return
        for key, part in self._resumable().items():
            part.load_state_dict(saved[key])
        self.state, best = TrainState(**saved["train_state"]), saved["best_state_dict"]
        self.best_weights = saved["state_dict"] if best is None else best  # None: the saved epoch is the best

    def save_resume_point(self, point: ResumePoint) -> None:
        parts = {key: part.state_dict() for key, part in self._resumable().items()}
        parts["state_dict"] = cpu_state_dict(self.model)
        # The best weights again only when the best epoch lies behind: 1/4 of the file. Never with select_by: last,
        # where they are the last validated epoch's, and the run ends with a validation that replaces them.
        behind = self.state.best_epoch != self.state.epoch and self.common.select_by != "last"
        point.save(parts, self.state, self.best_weights if behind else None)

    def _epoch_loader(
        self, train_set: PreparedSplit, sampler: DistributedSampler, epoch: int
    ) -> tuple[DataLoader, int]:
        """(the epoch's batches, its seed). Per-epoch seeds: a resumed run replays exactly the augmentations and batch
        order of an uninterrupted one."""
        epoch_seed = self.common.seed * 100_003 + epoch * 1_009 + self.context.rank
        torch.manual_seed(epoch_seed)
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(epoch_seed)
        options = {"num_workers": self.workers, "pin_memory": self.pin_memory, "generator": generator}
        return DataLoader(train_set, self.batch_size, sampler=sampler, drop_last=True, **options), epoch_seed

    def _progress(self, epoch: int) -> float:
        """How much of the training (0-1) has passed as ``epoch`` starts: of the epochs or of the time budget."""
        by_epochs = (epoch - 1) / self.cfg.epochs if self.cfg.epochs else 0.0
        return max(by_epochs, self.state.elapsed_seconds / self.budget_s if self.budget_s else 0.0)

    def planned_epochs(self) -> float:
        """The epochs this run will train as far as known now: ``epochs``, or under a time budget the epochs done
        plus those the rest of it allows at the speed so far (unknown, inf, before a budget-only run's first)."""
        done, spent = self.state.epoch, self.state.elapsed_seconds
        by_speed = done + max(0.0, self.budget_s - spent) * done / spent if self.budget_s and done else math.inf
        return min(float(self.cfg.epochs or math.inf), by_speed)

    def fit(self, prepared_dir: Path, paths: TrainPaths, tracker=None) -> TrainState:
        """Train to ``epochs`` (or an early stop or the time budget), with resume points every ``checkpoint_minutes``
        and after the last epoch; writes the best model at the end."""
        meta = read_meta(prepared_dir)
        self.image_size = meta["image_size"]
        train_set, valid_set = training_datasets(prepared_dir, self.name, self.cfg)
        valid_loader = sharded_loader(valid_set, self.batch_size, self.context, self.workers, self.pin_memory)
        point = self.resume_point = ResumePoint(
            paths.last, run_fingerprint(self.name, self.params, meta), self.params.resources.checkpoint_minutes
        )
        # The same sampler with one process or many: the global batches are the same sets of images either way.
        sampler = DistributedSampler(
            train_set, self.context.world_size, self.context.rank, shuffle=True, seed=self.common.seed, drop_last=True
        )
        steps = len(sampler) // self.batch_size
        self.schedule = build_schedule(self.cfg, self.optimizer, self.maximize, steps, self.budget_s)
        self.resume(point)
        first = self.state.epoch + 1
        # epochs 0: until the time budget ends it (the config requires one then)
        for epoch in range(first, self.cfg.epochs + 1) if self.cfg.epochs else itertools.count(first):
            if self.should_stop():
                break
            started = self._epoch_started = time.perf_counter()
            planned = self.planned_epochs()
            strength, device_augment = epoch_augmentation(train_set, self.cfg, self.common, self.image_size, planned)
            loader, epoch_seed = self._epoch_loader(train_set, sampler, epoch)
            augment = device_augment.seeded(epoch_seed, self.device) if device_augment else None
            self.train_size = progressive_size(self.image_size, self.common, self._progress(epoch))
            try:
                loss_sum, seen = self.train_one_epoch(loader, epoch, augment)
            except PetsegError as err:
                raise self._diverged(str(err), paths) from None
            train_seconds = time.perf_counter() - started
            row = {"epoch": epoch, "train_loss": loss_sum / seen, "augment_strength": strength}
            last = epoch == self.cfg.epochs or self.budget_spent()
            if last or epoch % self.common.validate_every == 0:
                row |= self.validate(valid_loader, epoch)
            self._stop_if_diverged(row, paths)
            train_seconds, epoch_seconds = self.context.max(train_seconds, time.perf_counter() - started)
            row |= {"lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": epoch_seconds}
            row["images_per_second"] = seen / train_seconds
            self.record(row)
            if last and epoch != self.cfg.epochs:
                self.state.stopped_by = "time budget"  # before the resume point: a resumed run stops here too
            if self.context.is_main and point.due():
                self.save_resume_point(point)
            self.state.elapsed_seconds += self.context.max(time.perf_counter() - started - epoch_seconds)[0]
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            self.say(epoch_line(row, self.cfg.epochs, self.state, self.budget_s, self.common.select_by))
        if self.context.is_main and point.saved_epoch != self.state.epoch:
            self.save_resume_point(point)
        if self.context.is_main:  # written once at the end (a resumed run too): its presence means a finished run
            model = trained_model(self.name, self.params, meta["image_size"], self.best_weights, self.state.best_epoch)
            save_checkpoint(paths.best, model)
        self.context.barrier()
        return self.state

    def best_model(self) -> nn.Module:
        """The best epoch's weights in a fresh eval-mode CPU model (no DDP or compile wrapper)."""
        return model_from_weights(self.name, self.model_params, self.best_weights)
