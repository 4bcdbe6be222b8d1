"""Benchmarks that print ratios measured side by side in one run (never asserted in timed tests)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from petseg.config import AugmentConfig, PrepareConfig
from petseg.data import PreparedSplit
from petseg.download import ARCHIVES, file_digests
from petseg.errors import PetsegError
from petseg.extract import extract_archive
from petseg.fileio import write_json
from petseg.losses import BCEDiceLoss
from petseg.models import build_model, normalization
from petseg.prepare import build_splits, prepare_dataset
from petseg.runtime import configure_threads, loader_workers
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


def _extracted(source: Path, work: Path) -> tuple[Path, Path]:
    trees = {}
    for archive in ARCHIVES:
        path = source / archive
        if not path.is_file():
            raise PetsegError(f"--source: {path} not found (a directory holding {' and '.join(ARCHIVES)})")
        trees[archive] = extract_archive(path, work / archive.removesuffix(".tar.gz"), file_digests(path)["sha256"])
    return trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations"


def bench_prepare(source: Path, size: int, workers: int) -> dict:
    """The prepare path (draft-mode decode, process pool, trimaps too) vs a naive PIL loop over the same photos."""
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = _extracted(source, Path(tmp))
        cfg = PrepareConfig(image_size=size, workers=workers)
        names = [e.name for entries in build_splits(annotations_dir, cfg).values() for e in entries]
        paths = [images_dir / f"{name}.jpg" for name in names]

        def naive() -> int:
            for path in paths:
                Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return len(paths)

        def ours() -> int:
            report_ = prepare_dataset(images_dir, annotations_dir, Path(tmp) / "prepared", cfg)
            return report_["counts"]["total"] + report_["skipped_count"]

        naive_rate, ours_rate = timed(naive), timed(ours)
    return report_ratio(
        "prepare",
        ("petseg prepare (images + masks)", "prepare_img_s", ours_rate),
        ("naive PIL open/convert/resize", "naive_img_s", naive_rate),
        " (target >= 2)",
        {"images": len(paths), "size": size, "workers": workers},
    )


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, trials: int = 3) -> float:
    """The machine's measured fp32 matmul rate (best of ``trials``): the yardstick for model efficiency."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def _synthetic_prepared(directory: Path, size: int, count: int) -> None:
    rng = np.random.default_rng(0)
    np.save(directory / "train_images.npy", rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    np.save(directory / "train_masks.npy", (rng.random((count, size, size)) > 0.5).astype(np.uint8))
    rows = "".join(f"{i},img_{i},cat,x,1,{size},{size}\n" for i in range(count))
    (directory / "train.csv").write_text("index,name,species,breed,class_id,width,height\n" + rows)


def training_step(model_name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One Adam step of a freshly built (seeded) model on a batch, as training does it."""
    torch.manual_seed(0)
    model = build_model(model_name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = BCEDiceLoss()

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_through(loader: DataLoader, step: Callable[[torch.Tensor, torch.Tensor], None]) -> int:
    """Train on every batch of ``loader``; returns the number of images."""
    seen = 0
    for images, masks in loader:
        step(images, masks)
        seen += len(images)
    return seen


def bench_train(model_name: str, size: int, batch_size: int, steps: int, workers: int | None, threads: int) -> dict:
    """Model-only training img/s (synthetic tensors) vs whole steps through the real data path.

    ``workers`` None: what training picks on this machine for the default params (num_workers 4).
    """
    configure_threads(threads)
    if workers is None:
        workers = loader_workers(4, torch.device("cpu"))
    step = training_step(model_name)
    images = torch.randn(batch_size, 3, size, size)
    masks = (torch.rand(batch_size, 1, size, size) > 0.5).to(torch.uint8)
    with FlopCounterMode(display=False) as counter:
        step(images, masks)  # also the warm-up
    flops_per_image = counter.get_total_flops() / batch_size

    def model_only() -> int:
        for _ in range(steps):
            step(images, masks)
        return steps * batch_size

    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        _synthetic_prepared(Path(tmp), size, steps * batch_size)
        mean, std = normalization({})
        dataset = PreparedSplit(Path(tmp), "train", train_transforms(AugmentConfig(), size, mean, std))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)

        # A-B-A so that drift on a noisy machine does not favour either side.
        first, through_data, second = timed(model_only), timed(lambda: train_through(loader, step)), timed(model_only)
    model_rate = (first + second) / 2
    peak = matmul_peak_gflops()
    achieved = flops_per_image * model_rate / 1e9
    result = {
        "model": model_name,
        "size": size,
        "batch_size": batch_size,
        "steps": steps,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "model_only_img_s": round(model_rate, 3),
        "data_path_img_s": round(through_data, 3),
        "ratio": round(through_data / model_rate, 3),
        "gflop_per_image": round(flops_per_image / 1e9, 3),
        "achieved_gflop_s": round(achieved, 2),
        "matmul_peak_gflop_s": round(peak, 2),
        "fraction_of_peak": round(achieved / peak, 3),
    }
    return report(
        f"train-{model_name}-{size}",
        [
            ("model only (synthetic tensors)", model_rate, "img/s"),
            ("whole steps through the data path", through_data, "img/s"),
            ("ratio (target >= 0.95)", through_data / model_rate, "x"),
            ("achieved", achieved, "GFLOP/s"),
            ("fp32 matmul peak", peak, "GFLOP/s"),
            ("fraction of peak (target >= 0.75)", achieved / peak, ""),
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
        predict_rate = timed(lambda: predict_paths(predictor, [images], Path(tmp), batch_size=batch_size).written)
    model_rate = timed(model_only)
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
    step = training_step(model_name)
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

        train_through(loaders["petseg"], step)  # warm-up
        rates = {name: timed(lambda loader=loader: train_through(loader, step)) for name, loader in loaders.items()}
    return report_ratio(
        "baseline",
        ("petseg data path (prepared arrays, v2)", "petseg_img_s", rates["petseg"]),
        ("reference data path (PIL per item, v1, 0 workers)", "reference_img_s", rates["reference"]),
        "",
        {"model": model_name, "size": size, "batch_size": batch_size, "images": len(names)},
    )
