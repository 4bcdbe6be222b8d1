"""`petseg bench train`: the Trainer's epoch loop vs a bare PyTorch loop, through the data path, vs the peak."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from petseg.bench import report, significant, timed
from petseg.config import Params
from petseg.data.dataset import PreparedSplit
from petseg.data.device_augment import training_augmentation
from petseg.data.layout import images_path, list_path, masks_path, write_split_csv
from petseg.models import normalization
from petseg.runtime import AMP_DTYPES, autocast_context, native_amp
from petseg.training.trainer import Trainer


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, trials: int = 3) -> float:
    """The machine's measured matmul rate (best of ``trials``): the yardstick for model efficiency."""
    n, repeats = (8192, 20) if device.type == "cuda" else (2048, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def _synthetic_prepared(directory: Path, size: int, count: int) -> None:
    """A train split in the prepared layout, random pixels and masks."""
    rng = np.random.default_rng(0)
    np.save(images_path(directory, "train"), rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    np.save(masks_path(directory, "train"), (rng.random((count, size, size)) > 0.5).astype(np.uint8))
    write_split_csv(list_path(directory, "train"), [(f"img_{i}", "cat", "x", 1, size, size) for i in range(count)])


def flops_per_image(trainer: Trainer, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training step, per image (torch.utils.flop_counter)."""
    trainer.model.train()
    with FlopCounterMode(display=False) as counter:
        trainer.loss_fn(trainer.model(images), masks).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


def plain_steps(trainer: Trainer, images: torch.Tensor, masks: torch.Tensor, steps: int) -> int:
    """The same model and optimizer stepped by a bare PyTorch loop (plain BCE, no scheduler, scaler or checks): what
    the Trainer's loop is held against. Sharing the optimizer keeps its speed out of the ratio: it measures the loop."""
    trainer.model.train()
    targets = masks.float()
    for _ in range(steps):
        with autocast_context(trainer.device, trainer.amp):
            loss = F.binary_cross_entropy_with_logits(trainer.forward(images), targets)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    synchronize(trainer.device)
    return steps * len(images)


def trainer_steps(trainer: Trainer, batches, augment=None) -> int:
    """Train on every batch with the Trainer's own epoch loop; returns the number of images."""
    _, seen = trainer.train_one_epoch(batches, augment=augment)
    synchronize(trainer.device)
    return seen


def _side_by_side(trainer: Trainer, batch, steps: int, data_path, peak_dtype: torch.dtype) -> tuple[float, ...]:
    """(plain img/s, model-only img/s, data-path img/s, matmul peak GFLOP/s).

    Every figure measured twice, yardsticks before and after two data-path runs (mirrored in time), and the best
    of each kept: drift on a noisy machine favours neither side of any ratio.
    """
    images, masks = batch
    synthetic = [batch] * steps
    peaks, plain_rates, model_rates = [], [], []

    def measure_yardsticks() -> None:
        peaks.append(matmul_peak_gflops(trainer.device, peak_dtype))
        plain_rates.append(timed(lambda: plain_steps(trainer, images, masks, steps)))
        model_rates.append(timed(lambda: trainer_steps(trainer, synthetic)))

    measure_yardsticks()
    through_data = max(timed(lambda: trainer_steps(trainer, *data_path)) for _ in range(2))
    measure_yardsticks()
    return max(plain_rates), max(model_rates), through_data, max(peaks)


def bench_train(model_name: str, size: int, batch_size: int, steps: int, params: Params) -> dict:
    """Training img/s three ways, side by side: a bare PyTorch loop and the Trainer's own epoch loop
    (:meth:`petseg.training.trainer.Trainer.train_one_epoch`) on synthetic tensors already on the device, and that
    loop through the real data path; plus model-only GFLOP/s as a fraction of the measured matmul peak.

    ``params.train.common`` gives device, AMP, channels_last, compile and where augmentation runs. ``steps`` 0: 3 on
    CPU, 100 on CUDA.
    """
    trainer = Trainer(model_name, params)
    common, device, workers = trainer.common, trainer.device, trainer.workers
    steps = steps or (100 if device.type == "cuda" else 3)
    images = torch.randn(batch_size, 3, size, size, device=device)
    masks = (torch.rand(batch_size, 1, size, size, device=device) > 0.5).to(torch.uint8)
    image_flops = flops_per_image(trainer, images, masks)
    trainer_steps(trainer, [(images, masks)])  # warm-up (and compilation)
    # Under AMP the yardstick is the half-precision matmul where the device runs it natively (a GPU, a CPU with AMX
    # or AVX-512 bf16); elsewhere a CPU's stays fp32 (emulated).
    half = AMP_DTYPES.get(trainer.amp, torch.float32)
    peak_dtype = half if device.type == "cuda" or trainer.amp == native_amp("auto", device) else torch.float32

    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        _synthetic_prepared(Path(tmp), size, steps * batch_size)
        mean, std = normalization(trainer.model_params)
        transform, device_augment = training_augmentation(common.augment, size, mean, std)
        loader = DataLoader(
            PreparedSplit(Path(tmp), "train", transform),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        augment = device_augment.seeded(0, device) if device_augment else None
        plain_rate, model_rate, through_data, peak = _side_by_side(
            trainer, (images, masks), steps, (loader, augment), peak_dtype
        )
    rates = {"plain": plain_rate, "model": model_rate, "data": through_data, "peak": peak, "flops": image_flops}
    where = "on the device" if device_augment else "in the loader"
    return _report(trainer, size, batch_size, steps, rates, peak_dtype, where)


def _report(trainer: Trainer, size: int, batch_size: int, steps: int, rates: dict, peak_dtype, where: str) -> dict:
    common, model_name = trainer.common, trainer.name
    plain_rate, model_rate, through_data, peak = rates["plain"], rates["model"], rates["data"], rates["peak"]
    image_flops = rates["flops"]
    achieved = image_flops * model_rate / 1e9
    result = {
        "model": model_name,
        "size": size,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(trainer.device),
        "amp": trainer.amp,
        "channels_last": common.channels_last,
        "compile": common.compile,
        "augment": where,
        "workers": trainer.workers,
        "threads": torch.get_num_threads(),
        "plain_pytorch_img_s": significant(plain_rate),
        "model_only_img_s": significant(model_rate),
        "data_path_img_s": significant(through_data),
        "loop_vs_plain": significant(model_rate / plain_rate),
        "ratio": significant(through_data / model_rate),
        "gflop_per_image": significant(image_flops / 1e9),
        "achieved_gflop_s": significant(achieved),
        "matmul_peak_gflop_s": significant(peak),
        "fraction_of_peak": significant(achieved / peak),
        "plain_fraction_of_peak": significant(image_flops * plain_rate / 1e9 / peak),
    }
    peak_name = str(peak_dtype).removeprefix("torch.")
    return report(
        f"train-{model_name}-{size}",
        [
            ("plain PyTorch steps (synthetic tensors)", plain_rate, "img/s"),
            ("petseg's loop, model only (synthetic tensors)", model_rate, "img/s"),
            ("loop / plain", model_rate / plain_rate, "x"),
            (f"petseg's loop through the data path (augment {where})", through_data, "img/s"),
            ("data path / model only (target >= 0.95)", through_data / model_rate, "x"),
            ("achieved (model only)", achieved, "GFLOP/s"),
            (f"{peak_name} matmul peak", peak, "GFLOP/s"),
            ("fraction of peak (target >= 0.75 on CPU)", achieved / peak, ""),
            ("plain PyTorch's fraction of peak", result["plain_fraction_of_peak"], ""),
        ],
        result,
    )
