"""`petseg bench accuracy`: the reference report's recipe as a plain loop vs petseg's Trainer with the shipped recipe,
trained side by side for the same wall-clock budget on the same prepared split, scored by the same metric code."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from petseg.bench import extracted_archives, report
from petseg.bench.folds import write_fold
from petseg.config import Params
from petseg.data.cache import prepare_dataset
from petseg.data.dataset import PreparedSplit
from petseg.data.transforms import eval_transforms
from petseg.errors import PetsegError
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import bootstrap_ci, per_image_scores, summarize
from petseg.models import HALF_MEAN, HALF_STD, build_model, with_tta
from petseg.progress import progress, progress_line
from petseg.runtime import configure_threads, loader_workers, make_deterministic, resolve_device
from petseg.training.reports import time_spent
from petseg.training.trainer import Trainer, TrainPaths

# The report's recipe: its architectures as published, BCE + soft Dice, Adam at 1e-3, batch 16, horizontal flips only
# (here of the photo and its mask together: the report flipped the photo alone), no schedule, no validation.
REFERENCE_MODEL_PARAMS = {"unet": {"base_channels": 64, "batch_norm": False}, "res34": {"pretrained": False}}
REFERENCE_LR, REFERENCE_BATCH = 1e-3, 16


def _bce_soft_dice(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    truth = (masks == 1).float()
    probabilities = torch.sigmoid(logits)
    overlap = (probabilities * truth).sum((1, 2, 3))
    dice = 1 - (2 * overlap + 1) / (probabilities.sum((1, 2, 3)) + truth.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, truth) + dice.mean()


def train_reference(
    model_name: str,
    prepared: Path,
    budget_s: float,
    seed: int,
    epochs: int,
    device: torch.device,
    workers: int,
) -> tuple[torch.nn.Module, dict]:
    """The plain loop on ``device`` (in fp32, as the report trained) with ``workers`` loader processes, epoch after
    epoch until the epoch that crosses ``budget_s``, or for exactly ``epochs`` when not 0; (the model on the CPU,
    what it trained)."""
    torch.manual_seed(seed)
    model = build_model(model_name, **REFERENCE_MODEL_PARAMS[model_name]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
    transform = v2.Compose(
        [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(HALF_MEAN, HALF_STD)]
    )
    generator = torch.Generator().manual_seed(seed)
    photos = PreparedSplit(prepared, "train", transform)
    options = {"num_workers": workers, "pin_memory": device.type == "cuda", "generator": generator}
    loader = DataLoader(photos, REFERENCE_BATCH, shuffle=True, drop_last=True, **options)
    if not len(loader):
        raise PetsegError(
            f"the train split has {len(photos)} photos, fewer than the reference's batch of {REFERENCE_BATCH}"
        )
    started, done, per_epoch = time.perf_counter(), 0, len(loader) * REFERENCE_BATCH
    while (done < epochs) if epochs else (time.perf_counter() - started < budget_s):
        model.train()
        epoch_started, loss_sum = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device)
        for images, masks in progress(loader, desc=f"reference epoch {done + 1}", unit=" batch"):
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            loss = _bce_soft_dice(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()  # read once an epoch: a read per step would stall a GPU's queue
        mean_loss, done = loss_sum.item() / len(loader), done + 1  # the read waits for the epoch's last step
        # A line per epoch, as petseg's side prints: a long reference side is not silent in a log.
        now = time.perf_counter()
        epoch_s, spent = now - epoch_started, now - started
        of = f"/{epochs} ({spent / 60:.1f} min)" if epochs else f" ({time_spent(spent, budget_s)})"
        progress_line(
            f"reference_{model_name}: epoch {done}{of} train_loss {mean_loss:.4f} "
            f"{epoch_s:.1f}s {per_epoch / epoch_s:.1f} img/s"
        )
    seconds = time.perf_counter() - started
    return model.cpu().eval(), _trained(done, per_epoch, seconds)


def _trained(epochs: int, per_epoch: int, seconds: float) -> dict:
    images = epochs * per_epoch
    return {"epochs": epochs, "images_seen": images, "images_per_second": images / seconds, "seconds": seconds}


def test_scores(model: torch.nn.Module, prepared: Path, boundary_px: int, tta: str, threshold: float) -> dict:
    """Test-split scores by the evaluate stage's own code (0.5/0.5 normalization, as both sides train with it)."""
    dataset = PreparedSplit(prepared, "test", eval_transforms(HALF_MEAN, HALF_STD))
    loader, cpu = DataLoader(dataset, 16), torch.device("cpu")
    result = evaluate_loader(with_tta(model, tta), loader, cpu, threshold, boundary_px=boundary_px)
    scores = summarize(result.counts)
    low, high = bootstrap_ci(per_image_scores(result.counts)["dice"].numpy())
    out = {"dice_per_image": scores["dice_per_image"], "dice_dataset": scores["dice_dataset"], "ci95": [low, high]}
    if result.plain_counts is not None:  # what the test-time augmentation adds
        out["dice_per_image_no_tta"] = summarize(result.plain_counts)["dice_per_image"]
    return out


def compare_once(
    model_name: str,
    data: Path,
    budget_s: float,
    params: Params,
    seed: int,
    with_reference: bool = True,
    reference_epochs: int = 0,
) -> dict:
    """Both recipes (or petseg's alone) trained for ``budget_s`` each on ``data``'s train split with ``seed``, scored
    on its test split. With ``reference_epochs`` the reference trains that many epochs and the time it took is
    petseg's budget: the regime is then the same on a fast and a slow machine."""
    boundary_px, sides = params.evaluate.boundary_px, {"seed": seed}
    # Each side scored as its recipe serves it: the report's without test-time augmentation at 0.5, ours as its
    # checkpoint would be (train.common.tta and threshold).
    if with_reference:
        device = resolve_device(params.train.common.device)  # both sides train where petseg's would
        workers = loader_workers(params.resources.num_workers, device)
        reference, reference_run = train_reference(model_name, data, budget_s, seed, reference_epochs, device, workers)
        sides["reference"] = test_scores(reference, data, boundary_px, "none", 0.5) | reference_run
        budget_s = reference_run["seconds"] if reference_epochs else budget_s
    sides["budget_s"] = budget_s
    common = dataclasses.replace(params.train.common, seed=seed, max_minutes=budget_s / 60)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, common=common))
    ours = Trainer(model_name, params)
    with tempfile.TemporaryDirectory(prefix="petseg-bench-run-") as tmp:
        state = ours.fit(data, TrainPaths(best=Path(tmp) / "best.pt", last=Path(tmp) / "last.pt"))
    per_epoch = len(PreparedSplit(data, "train")) // ours.batch_size * ours.batch_size
    sides["petseg"] = test_scores(ours.best_model(), data, boundary_px, common.tta, common.threshold)
    sides["petseg"] |= _trained(state.epoch, per_epoch, state.elapsed_seconds)
    if with_reference:
        sides["dice_gain"] = sides["petseg"]["dice_per_image"] - sides["reference"]["dice_per_image"]
    return sides


SIDE_FIGURES = ("dice_per_image", "dice_dataset", "epochs", "images_seen", "images_per_second", "seconds")


def _summary(runs: list[dict], side: str) -> dict:
    out = {}
    for key in SIDE_FIGURES:
        values = [run[side][key] for run in runs]
        out |= {key: float(np.mean(values)), f"{key}_min": min(values), f"{key}_max": max(values)}
    return out


def bench_accuracy(
    source: Path,
    model_name: str,
    budget_s: float,
    params: Params,
    runs: int = 1,
    folds: int = 0,
    with_reference: bool = True,
    reference_epochs: int = 0,
) -> dict:
    """Both recipes (or, ``with_reference`` False, petseg's alone: enough to compare its settings) for ``budget_s``
    of training each (or, with ``reference_epochs``, the time the reference takes for that many) on
    ``params.prepare``'s split of ``source``, ``runs`` times with seeds seed, seed + 1, ...; scored on the test split,
    or with ``folds`` on each of that many disjoint parts of the trainval photos (the test split untouched, for
    tuning). JSON and a table."""
    if reference_epochs and not with_reference:
        raise PetsegError(
            "--reference-epochs: the reference sets the budget, so it cannot be left out (--no-reference)"
        )
    # Like the reference loop, petseg's side trains until the budget ends it (its schedule then spans the budget).
    until_budget = {model_name: dataclasses.replace(params.train.model(model_name), epochs=0)}
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, **until_budget))
    configure_threads(params.resources.threads)
    make_deterministic()  # as the Trainer sets it: the first run's reference under the same algorithms as the rest
    results = []
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = extracted_archives(source, Path(tmp))
        prepared = Path(tmp) / "prepared"
        prepare_dataset(images_dir, annotations_dir, prepared, params.prepare, params.resources.workers)
        targets = [("test split", prepared)]
        if folds:
            seed, fraction = params.prepare.seed, params.prepare.valid_fraction
            made = (write_fold(prepared, Path(tmp) / f"fold{k}", folds, k, seed, fraction) for k in range(folds))
            targets = [(f"fold {k + 1}/{folds}", path) for k, path in enumerate(made)]
        for run in range(runs):
            for label, data in targets:
                run_seed = params.train.common.seed + run
                result = compare_once(model_name, data, budget_s, params, run_seed, with_reference, reference_epochs)
                results.append(result | {"on": label})
    budget = {"reference_epochs": reference_epochs} if reference_epochs else {"budget_s": budget_s}
    return _report(model_name, params.prepare.image_size, budget, results, folds)


def _report(model_name: str, size: int, budget: dict, results: list[dict], folds: int) -> dict:
    sides = [side for side in ("reference", "petseg") if side in results[0]]
    # On folds the score is of a fold's held-out trainval photos: saying "test" there would claim what tuning avoids.
    scored = "held-out Dice per image" if folds else "test Dice per image"
    rows = []
    for result in results:
        where = f"seed {result['seed']}, {result['on']}"
        for side in sides:
            figures = result[side]
            rows.append((f"{where}: {side} {scored}", figures["dice_per_image"], ""))
            seen = f"/ {figures['images_seen']} / {figures['seconds']:.0f} s"
            rows.append((f"{where}: {side} epochs / images seen / seconds", figures["epochs"], seen))
            rows.append((f"{where}: {side} images per second", figures["images_per_second"], "img/s"))
        if "dice_per_image_no_tta" in result["petseg"]:
            rows.append((f"{where}: petseg {scored} without TTA", result["petseg"]["dice_per_image_no_tta"], ""))
        if "dice_gain" in result:
            rows.append((f"{where}: petseg - reference, {scored}", result["dice_gain"], ""))
    details = {"model": model_name, "size": size, **budget, "folds": folds, "runs": results}
    details |= {side: _summary(results, side) for side in sides}
    if "reference" in sides:
        gains = [result["dice_gain"] for result in results]
        spread = [
            (f"petseg - reference over {len(results)} comparisons: mean", float(np.mean(gains)), ""),
            ("  lowest", min(gains), ""),
            ("  highest", max(gains), ""),
        ]
        details |= {"dice_gain": float(np.mean(gains)), "dice_gain_min": min(gains), "dice_gain_max": max(gains)}
    else:
        spread = [(f"petseg over {len(results)} runs: mean {scored}", details["petseg"]["dice_per_image"], "")]
    rows += spread if len(results) > 1 else []  # one run: its own rows say it all
    name = (
        f"accuracy-{model_name}-{size}"
        + (f"-{folds}fold" if folds else "")
        + ("" if "reference" in sides else "-petseg")
    )
    return report(name, rows, details)
