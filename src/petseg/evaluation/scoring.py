"""Score checkpoints on a prepared split, overall and broken down by species and breed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from petseg.config import EvaluateConfig
from petseg.data.dataset import PreparedSplit
from petseg.errors import PetsegError
from petseg.evaluation.loop import PassResult, evaluate_loader
from petseg.evaluation.metrics import bootstrap_ci, degenerate_counts, per_image_scores, summarize
from petseg.evaluation.predictor import Predictor

# What reports/evaluate/metrics.json keeps, so that `dvc exp show` stays readable; details.json has the rest.
TRACKED = ("dice_per_image", "iou_per_image", "boundary_dice_per_image", "dice_dataset")
LABELS = {
    "dice_per_image": "Dice / image",
    "iou_per_image": "IoU / image",
    "boundary_dice_per_image": "boundary Dice / image",
    "dice_dataset": "Dice (pooled)",
    "iou_dataset": "IoU (pooled)",
    "accuracy_dataset": "accuracy (pooled)",
    "precision_dataset": "precision (pooled)",
    "recall_dataset": "recall (pooled)",
}
HEADLINE = tuple(LABELS)  # what the evaluate stage prints and compares in comparison.png


def score_split(
    predictor: Predictor, prepared_dir: Path, split: str, cfg: EvaluateConfig, batch_size: int
) -> tuple[PassResult, list]:
    """Per-image confusion counts of the predictor's model for ``split``, overall, near the outline and (with TTA)
    for the network alone, and the split's rows (name, species, ...)."""
    dataset = PreparedSplit(prepared_dir, split, predictor.transform)
    loader = DataLoader(dataset, batch_size=batch_size)
    desc = f"evaluate {predictor.name}"
    result = evaluate_loader(
        predictor.model, loader, predictor.device, predictor.threshold, desc=desc, boundary_px=cfg.boundary_px
    )
    return result, dataset.rows


def evaluate_model(
    predictor: Predictor, prepared_dir: Path, cfg: EvaluateConfig, batch_size: int
) -> tuple[dict, PassResult, list]:
    """metrics.json's entry for one model on the test split, as the predictor serves it; with TTA, also the Dice of
    the network alone (the TTA effect)."""
    result, rows = score_split(predictor, prepared_dir, "test", cfg, batch_size)
    metrics = model_metrics(result, rows)
    if result.plain_counts is not None:
        metrics["dice_per_image_no_tta"] = round(summarize(result.plain_counts)["dice_per_image"], 6)
    return metrics, result, rows


def degenerate_warning(name: str, metrics: dict) -> str | None:
    """A line to print when a model predicts no pet (or only pet) on most images: its scores flatter it."""
    images = metrics["images"]
    for key, what in (("empty_predictions", "no pet"), ("full_predictions", "nothing but pet")):
        if metrics[key] * 2 > images:
            return f"{name} predicts {what} on {metrics[key]} of {images} test images; it has collapsed"
    return None


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()}


def model_metrics(result: PassResult, rows: list[dict]) -> dict:
    """Overall scores, the boundary score, a 95 % bootstrap interval on the per-image Dice, degenerate predictions,
    and a per-species breakdown, for metrics.json."""
    counts = result.counts
    out = _rounded(summarize(counts))
    out["dice_per_image_ci95"] = [round(v, 6) for v in bootstrap_ci(per_image_scores(counts)["dice"].numpy())]
    with_outline = result.band_counts.sum(1) > 0  # an image without a pet has no outline to score
    band = summarize(result.band_counts[with_outline])
    out["boundary_dice_per_image"] = round(band.get("dice_per_image", float("nan")), 6)
    out["boundary_iou_per_image"] = round(band.get("iou_per_image", float("nan")), 6)
    out |= degenerate_counts(counts)
    species = sorted({row["species"] for row in rows})
    out["species"] = {
        kind: _rounded(
            {
                k: v
                for k, v in summarize(counts[_indices(rows, "species", kind)]).items()
                if k in ("dice_per_image", "iou_per_image", "images")
            }
        )
        for kind in species
    }
    return out


def tracked_scores(metrics: dict) -> dict[str, float]:
    return {key: metrics[key] for key in TRACKED}


def per_image_table(counts_by_model: dict[str, torch.Tensor], rows: list[dict]) -> pd.DataFrame:
    """One row per model and test image: its Dice and IoU (the infer stage picks best and worst cases from it)."""
    frames = []
    for model, counts in counts_by_model.items():
        scores = per_image_scores(counts)
        frame = pd.DataFrame.from_records(rows, columns=["name", "species", "breed"])
        frame.insert(0, "model", model)
        frame["dice"], frame["iou"] = scores["dice"].numpy().round(6), scores["iou"].numpy().round(6)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def read_per_image_dice(path: Path, model: str, names: list[str]) -> np.ndarray:
    """``model``'s per-image test Dice from per_image.csv, in the order of ``names``."""
    if not path.is_file():
        raise PetsegError(f"{path}: missing; the evaluate stage writes it (dvc repro evaluate)")
    table = pd.read_csv(path, dtype={"name": str})
    ours = table[table["model"] == model]
    scores = dict(zip(ours["name"], ours["dice"], strict=True))
    missing = [name for name in names if name not in scores]
    if missing:
        raise PetsegError(f"{path}: no {model} score for {missing[0]} (and {len(missing) - 1} more); rerun evaluate")
    return np.array([scores[name] for name in names], dtype=float)


def breed_table(counts_by_model: dict[str, torch.Tensor], rows: list[dict]) -> pd.DataFrame:
    records = []
    for model, counts in counts_by_model.items():
        for breed in sorted({row["breed"] for row in rows}):
            idx = _indices(rows, "breed", breed)
            species = rows[idx[0]]["species"]
            records.append({"model": model, "breed": breed, "species": species} | _rounded(summarize(counts[idx])))
    return pd.DataFrame.from_records(records)


def per_image_dice(counts: torch.Tensor) -> list[float]:
    return per_image_scores(counts)["dice"].tolist()


def _indices(rows: list[dict], key: str, value: str) -> list[int]:
    return [i for i, row in enumerate(rows) if row[key] == value]
