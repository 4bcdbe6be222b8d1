"""Benchmarks that print ratios measured side by side in one run (never asserted in timed tests)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from petseg.config import AugmentConfig, PrepareConfig, TrainCommonConfig
from petseg.data import PreparedSplit
from petseg.device_augment import training_augmentation
from petseg.distributed import Context
from petseg.download import ARCHIVES, file_digests
from petseg.engine import autocast_context, train_epoch
from petseg.errors import PetsegError
from petseg.extract import extract_archive
from petseg.fileio import write_json
from petseg.losses import BCEDiceLoss
from petseg.models import build_model, normalization
from petseg.prepare import build_splits, prepare_dataset
from petseg.runtime import configure_threads, loader_workers, resolve_device
from petseg.transforms import train_transforms

BENCH_DIR = Path("reports/bench")


def report(name: str, rows: list[tuple[str, float, str]], result: dict) -> dict:
    """Print a table and one JSON line; save the JSON under reports/bench/."""
    width = max(len(label) for label, _, _ in rows)
    print(f"petseg bench {name}")
    for label, value, unit in rows:
        print(f"  {label:<{width}}  {value:>10.3f} {unit}")
    print(json.dumps({"bench": name, **result}, sort_keys=True))
    write_json(BENCH_DIR / f"{name}.json", {"bench": name, **result})
    return result


def report_ratio(
    name: str, ours: tuple[str, str, float], theirs: tuple[str, str, float], target: str, details: dict
) -> dict:
    """Two throughputs measured in one run and their ratio (ours / theirs)."""
    (our_label, our_key, our_rate), (their_label, their_key, their_rate) = ours, theirs
    ratio = our_rate / their_rate
    result = details | {our_key: round(our_rate, 3), their_key: round(their_rate, 3), "ratio": round(ratio, 3)}
    rows = [(their_label, their_rate, "img/s"), (our_label, our_rate, "img/s"), (f"ratio{target}", ratio, "x")]
    return report(name, rows, result)


def timed(fn: Callable[[], int]) -> float:
    """Items per second of ``fn`` (which returns how many items it processed)."""
    start = time.perf_counter()
    items = fn()
    return items / (time.perf_counter() - start)


def best_interleaved(first: Callable[[], int], second: Callable[[], int], rounds: int) -> tuple[float, float]:
    """Items/s of two workloads, the best of ``rounds`` runs each, taken in the order ABBA AB...: on a noisy machine
    one run each can differ by 20 %, and alternating keeps slow drift from favouring either side."""
    rates: tuple[list[float], list[float]] = ([], [])
    for round_ in range(rounds):
        for which in (0, 1) if round_ % 2 == 0 else (1, 0):
            rates[which].append(timed((first, second)[which]))
    return max(rates[0]), max(rates[1])


def _extracted(source: Path, work: Path) -> tuple[Path, Path]:
    trees = {}
    for archive in ARCHIVES:
        path = source / archive
        if not path.is_file():
            raise PetsegError(f"--source: {path} not found (a directory holding {' and '.join(ARCHIVES)})")
        trees[archive] = extract_archive(path, work / archive.removesuffix(".tar.gz"), file_digests(path)["sha256"])
    return trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations"


def bench_prepare(source: Path, size: int, workers: int, rounds: int = 3) -> dict:
    """The prepare path (draft-mode decode, process pool) vs a naive PIL loop making the same photos and masks."""
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = _extracted(source, Path(tmp))
        cfg = PrepareConfig(image_size=size, workers=workers)
        names = [e.name for entries in build_splits(annotations_dir, cfg).values() for e in entries]

        def naive() -> int:
            """The same outputs made the obvious way: one process, open, convert, resize photo and trimap."""
            for name in names:
                Image.open(images_dir / f"{name}.jpg").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                Image.open(annotations_dir / "trimaps" / f"{name}.png").resize((size, size), Image.Resampling.NEAREST)
            return len(names)

        def ours() -> int:
            report_ = prepare_dataset(images_dir, annotations_dir, Path(tmp) / "prepared", cfg)
            return report_["counts"]["total"] + report_["skipped_count"]

        naive_rate, ours_rate = best_interleaved(naive, ours, rounds)
    return report_ratio(
        "prepare",
        ("petseg prepare (images + masks)", "prepare_img_s", ours_rate),
        ("naive PIL loop (photo + trimap)", "naive_img_s", naive_rate),
        " (target >= 2)",
        {"images": len(names), "size": size, "workers": workers, "rounds": rounds},
    )


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
    rng = np.random.default_rng(0)
    np.save(directory / "train_images.npy", rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    np.save(directory / "train_masks.npy", (rng.random((count, size, size)) > 0.5).astype(np.uint8))
    rows = "".join(f"{i},img_{i},cat,x,1,{size},{size}\n" for i in range(count))
    (directory / "train.csv").write_text("index,name,species,breed,class_id,width,height\n" + rows)


class BenchTrainer:
    """A freshly built (seeded) model and optimizer, stepped by the training stage's own epoch loop."""

    def __init__(self, model_name: str, device: torch.device, common: TrainCommonConfig):
        torch.manual_seed(0)
        self.model = build_model(model_name).to(device)
        if common.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if common.compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=common.amp == "fp16")
        self.loss_fn = BCEDiceLoss()
        self.device, self.common = device, common

    def flops_per_image(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        """Forward + backward FLOPs of one training step, per image (torch.utils.flop_counter)."""
        self.model.train()
        with FlopCounterMode(display=False) as counter:
            self.loss_fn(self.model(images), masks).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / len(images)

    def plain_steps(self, images: torch.Tensor, masks: torch.Tensor, steps: int) -> int:
        """The same model stepped by a bare PyTorch loop (plain BCE, Adam): what petseg's loop is held against."""
        self.model.train()
        targets = masks.float()
        for _ in range(steps):
            with autocast_context(self.device, self.common.amp):
                loss = F.binary_cross_entropy_with_logits(self.forward(images), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        return steps * len(images)

    def run(self, batches, augment=None) -> int:
        """Train on every batch with the training stage's epoch loop; returns the number of images."""
        self.model.train()
        _, seen = train_epoch(
            self.forward,
            batches,
            self.optimizer,
            self.scaler,
            self.loss_fn,
            self.device,
            self.common,
            Context(),
            "bench",
            "bench",
            augment,
        )
        synchronize(self.device)
        return seen


def bench_train(model_name: str, size: int, batch_size: int, steps: int, common: TrainCommonConfig) -> dict:
    """Training img/s three ways, side by side: a bare PyTorch loop and the training stage's own epoch loop
    (:func:`petseg.engine.train_epoch`) on synthetic tensors already on the device, and that loop through the
    real data path; plus model-only GFLOP/s as a fraction of the measured matmul peak.

    ``common`` gives device, AMP, channels_last, compile and where augmentation runs. ``steps`` 0: 3 on CPU,
    100 on CUDA.
    """
    configure_threads(common.threads)
    device = resolve_device(common.device)
    steps = steps or (100 if device.type == "cuda" else 3)
    workers = loader_workers(common.num_workers, device)
    trainer = BenchTrainer(model_name, device, common)
    images = torch.randn(batch_size, 3, size, size, device=device)
    masks = (torch.rand(batch_size, 1, size, size, device=device) > 0.5).to(torch.uint8)
    flops_per_image = trainer.flops_per_image(images, masks)
    synthetic = [(images, masks)] * steps
    trainer.run(synthetic[:1])  # warm-up (and compilation)
    # Under AMP a GPU's yardstick is its half-precision matmul; a CPU's stays fp32 (its bf16 matmul is emulated).
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(common.amp, torch.float32)
    peak_dtype = half if device.type == "cuda" else torch.float32

    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        _synthetic_prepared(Path(tmp), size, steps * batch_size)
        mean, std = normalization({})
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
        # Every figure measured twice, yardsticks before and after two data-path runs (mirrored in time), and the
        # best of each kept: drift on a noisy machine favours neither side of any ratio.
        peaks, plain_rates, model_rates = [], [], []

        def measure_yardsticks() -> None:
            peaks.append(matmul_peak_gflops(device, peak_dtype))
            plain_rates.append(timed(lambda: trainer.plain_steps(images, masks, steps)))
            model_rates.append(timed(lambda: trainer.run(synthetic)))

        measure_yardsticks()
        through_data = max(timed(lambda: trainer.run(loader, augment)) for _ in range(2))
        measure_yardsticks()
    plain_rate, model_rate, peak = max(plain_rates), max(model_rates), max(peaks)
    achieved = flops_per_image * model_rate / 1e9
    where = "on the device" if device_augment else "in the loader"
    result = {
        "model": model_name,
        "size": size,
        "batch_size": batch_size,
        "steps": steps,
        "device": str(device),
        "amp": common.amp,
        "channels_last": common.channels_last,
        "compile": common.compile,
        "augment": where,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "plain_pytorch_img_s": round(plain_rate, 3),
        "model_only_img_s": round(model_rate, 3),
        "data_path_img_s": round(through_data, 3),
        "loop_vs_plain": round(model_rate / plain_rate, 3),
        "ratio": round(through_data / model_rate, 3),
        "gflop_per_image": round(flops_per_image / 1e9, 3),
        "achieved_gflop_s": round(achieved, 2),
        "matmul_peak_gflop_s": round(peak, 2),
        "fraction_of_peak": round(achieved / peak, 3),
        "plain_fraction_of_peak": round(flops_per_image * plain_rate / 1e9 / peak, 3),
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


def bench_infer(checkpoint: Path, images: Path, batch_size: int) -> dict:
    """`petseg predict` end to end (decode, resize, model, resize back, PNG) vs the model alone."""
    from petseg.inference import Predictor
    from petseg.predict import collect_inputs, predict_paths

    predictor = Predictor(checkpoint, "cpu")
    files, _ = collect_inputs([images])
    if not files:
        raise PetsegError(f"--images: no files in {images}")
    size = predictor.image_size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    predictor.probabilities(batch)  # warm-up

    def model_only() -> int:
        for _ in range(0, len(files), batch_size):
            predictor.probabilities(batch)
        return len(range(0, len(files), batch_size)) * batch_size

    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        predict_rate, model_rate = best_interleaved(
            lambda: predict_paths(predictor, [images], Path(tmp), batch_size=batch_size).written, model_only, 2
        )
    return report_ratio(
        "infer",
        ("petseg predict (files in, PNG masks out)", "predict_img_s", predict_rate),
        ("model only", "model_only_img_s", model_rate),
        "",
        {"model": predictor.name, "size": size, "images": len(files), "batch_size": batch_size},
    )


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
        mask = torch.from_numpy((np.asarray(trimap) != 2).astype(np.uint8))[None]
        return self.transform(image), mask


def bench_baseline(source: Path, model_name: str, size: int, batch_size: int, steps: int, threads: int) -> dict:
    """Training img/s through the reference data path vs ours (prepared arrays + v2), same model and batch."""
    configure_threads(threads)
    trainer = BenchTrainer(model_name, torch.device("cpu"), TrainCommonConfig(device="cpu", threads=threads))
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = _extracted(source, Path(tmp))
        cfg = PrepareConfig(image_size=size)
        names = [e.name for e in build_splits(annotations_dir, cfg)["train"]][: steps * batch_size]
        prepare_dataset(images_dir, annotations_dir, Path(tmp) / "prepared", cfg)
        mean, std = normalization({})
        ours = PreparedSplit(Path(tmp) / "prepared", "train", train_transforms(AugmentConfig(), size, mean, std))
        workers = loader_workers(4, torch.device("cpu"))
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
                num_workers=workers,
            ),
        }

        trainer.run(loaders["petseg"])  # warm-up
        reference_rate, petseg_rate = best_interleaved(
            lambda: trainer.run(loaders["reference"]), lambda: trainer.run(loaders["petseg"]), 2
        )
    return report_ratio(
        "baseline",
        ("petseg data path (prepared arrays, v2)", "petseg_img_s", petseg_rate),
        ("reference data path (PIL per item, v1, 0 workers)", "reference_img_s", reference_rate),
        "",
        {"model": model_name, "size": size, "batch_size": batch_size, "images": len(names)},
    )
