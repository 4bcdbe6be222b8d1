"""Score checkpoints on a prepared split, overall and broken down by species and breed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from petseg.data.dataset import PreparedSplit
from petseg.evaluation.loop import evaluate_loader
from petseg.evaluation.metrics import per_image_scores, summarize
from petseg.evaluation.predictor import Predictor

HEADLINE = (
    "dice_per_image",
    "iou_per_image",
    "dice_dataset",
    "iou_dataset",
    "accuracy_dataset",
    "precision_dataset",
    "recall_dataset",
)


def score_split(
    predictor: Predictor, prepared_dir: Path, split: str, threshold: float, batch_size: int, desc: str
) -> tuple[torch.Tensor, list[dict]]:
    """Per-image confusion counts (N, 4) for ``split`` and its rows (name, species, breed, ...)."""
    dataset = PreparedSplit(prepared_dir, split, predictor.transform)
    loader = DataLoader(dataset, batch_size=batch_size)
    counts, _ = evaluate_loader(predictor.model, loader, predictor.device, threshold, desc=desc)
    return counts, dataset.rows


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in scores.items()}


def model_metrics(counts: torch.Tensor, rows: list[dict]) -> dict:
    """Overall scores plus a per-species breakdown, for metrics.json."""
    out = _rounded(summarize(counts))
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
