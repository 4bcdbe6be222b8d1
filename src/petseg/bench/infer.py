"""`petseg bench infer`: `petseg predict` end to end vs the model alone."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from petseg.bench import best_interleaved, report_ratio
from petseg.errors import PetsegError
from petseg.evaluation.predict import collect_inputs, predict_paths
from petseg.evaluation.predictor import Predictor


def bench_infer(checkpoint: Path, images: Path, batch_size: int) -> dict:
    """`petseg predict` end to end (decode, resize, model, resize back, PNG) vs the model alone."""
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
