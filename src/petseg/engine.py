"""Training and evaluation loops: resumable, deterministic on CPU, never silently wrong.

Each epoch re-seeds the global RNG and the shuffle generator from (seed, epoch). So a run resumed
from ``<model>.last.pt`` replays exactly the augmentations and batch order of an uninterrupted run,
and ends with identical metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from petseg.checkpoint import load_checkpoint, save_checkpoint
from petseg.config import Params, TrainCommonConfig
from petseg.data import PreparedSplit, read_meta
from petseg.device_augment import BatchTransform, training_augmentation
from petseg.distributed import Context, per_process_batch
from petseg.errors import PetsegError
from petseg.losses import BCEDiceLoss
from petseg.metrics import confusion_counts, summarize
from petseg.models import build_model, normalization
from petseg.progress import progress
from petseg.runtime import configure_threads, loader_workers, make_deterministic, resolve_device, seed_everything
from petseg.transforms import eval_transforms

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "epoch_seconds", "images_per_second")


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    epochs_without_improvement: int = 0


@dataclass(frozen=True)
class TrainPaths:
    best: Path  # models/<model>.pt
    last: Path  # models/<model>.last.pt


def autocast_context(device: torch.device, amp: str | bool):
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_fingerprint(name: str, params: Params, meta: dict) -> str:
    """What a resumable run depends on; a different fingerprint means start over."""
    train = params.train
    relevant = {
        "model": name,
        "config": asdict(train.model(name)),
        "common": {k: v for k, v in asdict(train.common).items() if k not in ("num_workers", "threads")},
        "data": meta,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def model_payload(name: str, model_params: dict, image_size: int, state_dict: dict) -> dict[str, Any]:
    mean, std = normalization(model_params)
    return {
        "model": {"name": name, "params": model_params},
        "image_size": image_size,
        "normalization": {"mean": list(mean), "std": list(std)},
        "state_dict": state_dict,
    }


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    threshold: float,
    loss_fn: nn.Module | None = None,
    amp: str | bool = False,
    desc: str = "eval",
) -> tuple[torch.Tensor, float]:
    """Per-image confusion counts (N, 4) and the mean loss (NaN without ``loss_fn``)."""
    model.eval()
    # Kept on the device until the end: reading them per batch would sync a GPU on every batch.
    counts, loss_sum, seen = [], torch.zeros((), dtype=torch.float64, device=device), 0
    logit_threshold = math.log(threshold / (1 - threshold))  # sigmoid(x) > t  <=>  x > logit(t)
    for images, masks in progress(loader, desc=desc, unit=" batch"):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).double() * len(images)
        counts.append(confusion_counts(logits.float() > logit_threshold, masks))
        seen += len(images)
    mean_loss = loss_sum.item() / seen if loss_fn is not None and seen else float("nan")
    return torch.cat(counts).cpu() if counts else torch.zeros(0, 4, dtype=torch.long), mean_loss


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: nn.Module,
    device: torch.device,
    common: TrainCommonConfig,
    context: Context,
    desc: str,
    where: str,
    augment: BatchTransform | None = None,
    check_every: int = 0,
) -> tuple[float, int]:
    """One pass over ``loader`` (the model already in train mode); returns (loss sum, images) over every process.

    ``augment`` runs on the device, on the batches as the loader ships them (see :mod:`petseg.device_augment`).
    The loss is summed on the device and read every ``check_every`` steps (default: every step on a CPU, every
    25th on a GPU, where a host sync per step would stall the queue of launched kernels); a non-finite sum then
    stops training in every process.
    """
    check_every = check_every or (1 if device.type == "cpu" else 25)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, checked = 0, 0
    bar = progress(loader, desc=desc, unit=" batch", quiet=not context.is_main)

    def check(step: int) -> None:
        value = loss_sum.item()
        # Every process must agree to stop, or the others would wait forever in the next all-reduce.
        if not context.all_true(math.isfinite(value)):
            what = value if not math.isfinite(value) else "non-finite in another process"
            steps = f"step {step}" if step == checked + 1 else f"steps {checked + 1}-{step}"
            raise PetsegError(f"loss became {what} at {where}, {steps}")
        bar.set_postfix(loss=f"{value / seen:.4f}")

    step = 0
    for step, (images, masks) in enumerate(bar, start=1):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if augment is not None:
            images, masks = augment(images, masks)
        if common.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, common.amp):
            loss = loss_fn(forward(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(images)
        seen += len(images)
        if step % check_every == 0:
            check(step)
            checked = step
    if step > checked:
        check(step)
    total_loss, total_seen = context.sum(loss_sum.item(), seen)
    return total_loss, int(total_seen)


def train(
    name: str, params: Params, prepared_dir: Path, paths: TrainPaths, tracker=None, context: Context | None = None
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Train ``name`` per ``params``; returns the final state and the best weights (CPU).

    Under torchrun each process trains on its shard of every global batch (DistributedSampler,
    ``batch_size`` split evenly), metrics are reduced over all processes, and only rank 0 writes.
    """
    context = context or Context()
    common, cfg = params.train.common, params.train.model(name)
    meta = read_meta(prepared_dir)
    size = meta["image_size"]
    configure_threads(common.threads)
    make_deterministic()
    device = resolve_device(common.device)
    if device.type == "cuda" and context.active:
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    seed_everything(common.seed)
    batch_size = per_process_batch(cfg.batch_size, context, f"train.{name}.batch_size")

    model_params = cfg.model_params()
    model = build_model(name, **model_params).to(device)
    if common.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if context.active
        else model
    )
    forward = torch.compile(wrapped) if common.compile else wrapped
    mean, std = normalization(model_params)
    train_transform, device_augment = training_augmentation(common.augment, size, mean, std)
    train_set = PreparedSplit(prepared_dir, "train", train_transform)
    valid_set = PreparedSplit(prepared_dir, "valid", eval_transforms(mean, std))
    if len(train_set) < cfg.batch_size or len(valid_set) == 0:
        raise PetsegError(
            f"{prepared_dir}: {len(train_set)} train / {len(valid_set)} valid samples, too few for "
            f"train.{name}.batch_size {cfg.batch_size}; check reports/prepare.json"
        )

    loss_fn = BCEDiceLoss(common.loss.bce_weight, common.loss.dice_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    maximize = common.select_by == "dice"
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if maximize else "min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    scaler = torch.amp.GradScaler(device.type, enabled=common.amp == "fp16")
    state = TrainState()
    best_weights = cpu_state_dict(model)
    fingerprint = run_fingerprint(name, params, meta)
    say = print if context.is_main else (lambda *args, **kwargs: None)
    workers = loader_workers(common.num_workers, device)

    if paths.last.exists():
        saved = load_checkpoint(paths.last)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = TrainState(**saved["train_state"])
            best_weights = saved["best_state_dict"]
            say(f"train_{name}: resuming after epoch {state.epoch} from {paths.last}")
        else:
            say(f"train_{name}: {paths.last} is from other params or data; starting over")

    # The same sampler with one process or many: the global batches are the same sets of images either way.
    sampler = DistributedSampler(
        train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=common.seed, drop_last=True
    )
    valid_shard = Subset(valid_set, range(context.rank, len(valid_set), context.world_size))
    valid_loader = DataLoader(valid_shard, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if cfg.early_stop_patience and state.epochs_without_improvement >= cfg.early_stop_patience:
            say(f"train_{name}: early stop, no improvement for {state.epochs_without_improvement} epochs")
            break
        started = time.perf_counter()
        # Per-epoch seeds: a resumed run replays exactly the augmentations of an uninterrupted one.
        epoch_seed = common.seed * 100_003 + epoch * 1_009 + context.rank
        torch.manual_seed(epoch_seed)
        sampler.set_epoch(epoch)
        train_loader = DataLoader(
            train_set,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed),
        )
        augment = device_augment.seeded(epoch_seed, device) if device_augment else None
        model.train()
        try:
            loss_sum, seen = train_epoch(
                forward,
                train_loader,
                optimizer,
                scaler,
                loss_fn,
                device,
                common,
                context,
                f"{name} epoch {epoch}/{cfg.epochs}",
                f"epoch {epoch}",
                augment,
            )
        except PetsegError as err:
            raise PetsegError(
                f"train_{name}: {err}; lower train.{name}.lr or check the data. Last good checkpoint kept: {paths.last}"
            ) from None
        train_seconds = time.perf_counter() - started

        counts, val_loss = evaluate_loader(model, valid_loader, device, 0.5, loss_fn, common.amp, desc="validate")
        (val_loss_sum,) = context.sum(val_loss * len(counts) if len(counts) else 0.0)
        counts = context.gather(counts)
        scores = summarize(counts)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "val_loss": val_loss_sum / len(counts),
            "val_dice": scores["dice_per_image"],
            "val_iou": scores["iou_per_image"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - started,
            "images_per_second": seen / train_seconds,
        }
        score = row["val_dice"] if maximize else -row["val_loss"]
        scheduler.step(row["val_dice"] if maximize else row["val_loss"])
        state.epoch = epoch
        state.history.append(row)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.epochs_without_improvement = score, epoch, 0
            best_weights = cpu_state_dict(model)
        else:
            state.epochs_without_improvement += 1
        if context.is_main:
            save_checkpoint(
                paths.last,
                {
                    "fingerprint": fingerprint,
                    "state_dict": cpu_state_dict(model),
                    "best_state_dict": best_weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "train_state": asdict(state),
                },
            )
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        say(
            f"train_{name}: epoch {epoch}/{cfg.epochs} train_loss {row['train_loss']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_dice {row['val_dice']:.4f} val_iou {row['val_iou']:.4f} "
            f"lr {row['lr']:.2e} {row['epoch_seconds']:.1f}s {row['images_per_second']:.1f} img/s"
            + (" *best" if state.best_epoch == epoch else "")
        )
    # Written once at the end (a resumed or already finished run too): its presence means a finished run.
    if context.is_main:
        save_checkpoint(paths.best, model_payload(name, model_params, size, best_weights) | {"epoch": state.best_epoch})
    context.barrier()
    return state, best_weights
