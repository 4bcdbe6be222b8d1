"""Run a trained checkpoint: batches of uint8 images in, probabilities / binary masks out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from petseg.data.layout import sample_file
from petseg.data.transforms import eval_transforms
from petseg.evaluation.masks import PRED_COLOR, TRUTH_COLOR, mask_at_size, overlay
from petseg.models import with_tta
from petseg.models.checkpoint import load_trained_model
from petseg.progress import progress
from petseg.serving import normalized, sigmoid


class Predictor:
    """A checkpoint ready for inference at its training size, served as it was scored: with the test-time
    augmentation and threshold it carries (``tta`` overrides it only when given). ``model`` is what it serves."""

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu", tta: str | None = None):
        trained = load_trained_model(checkpoint)
        self.name, self.image_size, self.mean, self.std = trained.name, trained.image_size, trained.mean, trained.std
        self.device, self.tta, self.threshold = torch.device(device), tta or trained.tta, trained.threshold
        self.model = with_tta(trained.model.to(self.device), self.tta)
        self.transform = eval_transforms(self.mean, self.std)  # the same inputs as `normalized`, for Datasets

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) at the training size -> float32 (N, S, S) pet probabilities."""
        batch = torch.from_numpy(normalized(images, self.mean, self.std)).to(self.device)
        return sigmoid(self.model(batch).float()[:, 0].cpu().numpy())


def write_split_masks(predictor: Predictor, dataset, count: int, batch_size: int, out_dir: Path) -> None:
    """Masks of the first ``count`` samples of a prepared split as PNG at original size."""
    for start in progress(range(0, count, batch_size), desc=f"infer {predictor.name}", unit=" batch"):
        stop = min(start + batch_size, count)
        probs = predictor.probabilities(dataset.images[start:stop])
        for i, prob in zip(range(start, stop), probs, strict=True):
            row = dataset.rows[i]
            mask = mask_at_size(prob, int(row["width"]), int(row["height"]), predictor.threshold)
            Image.fromarray(mask).save(sample_file(out_dir, row["name"], ".png"))


def best_and_worst(predictor: Predictor, dataset, dice: np.ndarray, per_side: int) -> list[dict]:
    """Grid rows for the ``per_side`` best then worst cases by ``dice`` (one per sample; no case shown twice)."""
    order = np.argsort(-dice, kind="stable")
    best = order[:per_side].tolist()
    worst = [i for i in order[::-1][:per_side].tolist() if i not in best]
    rows = []
    for i in best + worst[::-1]:
        image = np.asarray(dataset.images[i])
        predicted = predictor.probabilities(image[None])[0] > predictor.threshold
        rows.append(
            {
                "name": dataset.rows[i]["name"],
                "dice": float(dice[i]),
                "photo": image,
                "truth": overlay(image, np.asarray(dataset.masks[i]) == 1, TRUTH_COLOR),
                "prediction": overlay(image, predicted, PRED_COLOR),
            }
        )
    return rows
