"""`petseg bench accuracy`: the reference report's recipe as a plain loop vs petseg's Trainer with the shipped recipe,
trained side by side for the same wall-clock budget on the same prepared split, scored by the same metric code."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from petseg.bench import extracted_archives, report
from petseg.config import Params
from petseg.data.cache import prepare_dataset
from petseg.data.dataset import PreparedSplit
from petseg.data.transforms import eval_transforms
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import bootstrap_ci, per_image_scores, summarize
from petseg.models import HALF_MEAN, HALF_STD, build_model, with_tta
from petseg.progress import progress
from petseg.runtime import configure_threads
from petseg.training.reports import EPOCHS_UNTIL_BUDGET
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


def train_reference(model_name: str, prepared: Path, budget_s: float, seed: int) -> tuple[torch.nn.Module, int]:
    """The plain loop, epoch after epoch until the epoch that crosses ``budget_s``; (model, epochs run)."""
    torch.manual_seed(seed)
    model = build_model(model_name, **REFERENCE_MODEL_PARAMS[model_name])
    optimizer = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
    transform = v2.Compose(
        [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(HALF_MEAN, HALF_STD)]
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        PreparedSplit(prepared, "train", transform), REFERENCE_BATCH, shuffle=True, drop_last=True, generator=generator
    )
    started, epochs = time.perf_counter(), 0
    while time.perf_counter() - started < budget_s:
        model.train()
        for images, masks in progress(loader, desc=f"reference epoch {epochs + 1}", unit=" batch"):
            loss = _bce_soft_dice(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epochs += 1
    return model.eval(), epochs


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


def bench_accuracy(source: Path, model_name: str, budget_s: float, params: Params) -> dict:
    """Both recipes for ``budget_s`` of training each on ``params.prepare``'s split of ``source``; JSON and a table."""
    common = dataclasses.replace(params.train.common, max_minutes=budget_s / 60, device="cpu")
    # Like the reference loop, petseg's side trains until the budget ends it (its schedule then spans the budget).
    until_budget = {model_name: dataclasses.replace(params.train.model(model_name), epochs=EPOCHS_UNTIL_BUDGET)}
    train = dataclasses.replace(params.train, common=common, **until_budget)
    params = dataclasses.replace(params, train=train)
    configure_threads(common.threads)
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        images_dir, annotations_dir = extracted_archives(source, Path(tmp))
        prepared = Path(tmp) / "prepared"
        prepare_dataset(images_dir, annotations_dir, prepared, params.prepare)
        reference, reference_epochs = train_reference(model_name, prepared, budget_s, common.seed)
        ours = Trainer(model_name, params)
        state = ours.fit(prepared, TrainPaths(best=Path(tmp) / "best.pt", last=Path(tmp) / "last.pt"))
        boundary_px = params.evaluate.boundary_px
        # Each side scored as its recipe serves it: the report's without test-time augmentation at 0.5, ours as its
        # checkpoint would be (train.common.tta and threshold).
        sides = {"reference": test_scores(reference, prepared, boundary_px, "none", 0.5)}
        sides["petseg"] = test_scores(ours.best_model(), prepared, boundary_px, common.tta, common.threshold)
    sides["reference"]["epochs"], sides["petseg"]["epochs"] = reference_epochs, state.epoch
    gain = sides["petseg"]["dice_per_image"] - sides["reference"]["dice_per_image"]
    rows = [
        (f"{side}: {what}", sides[side][key], "")
        for side in ("reference", "petseg")
        for what, key in (("test Dice per image", "dice_per_image"), ("test Dice pooled", "dice_dataset"))
    ]
    if "dice_per_image_no_tta" in sides["petseg"]:
        rows.insert(3, ("petseg: test Dice per image without TTA", sides["petseg"]["dice_per_image_no_tta"], ""))
    rows += [(f"{side}: epochs in the budget", sides[side]["epochs"], "") for side in sides]
    rows.append(("petseg - reference, test Dice per image", gain, ""))
    details = {"model": model_name, "size": params.prepare.image_size, "budget_s": budget_s, "dice_gain": gain}
    return report(f"accuracy-{model_name}-{params.prepare.image_size}", rows, details | sides)
