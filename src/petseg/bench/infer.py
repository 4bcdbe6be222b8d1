"""`petseg bench infer`: PyTorch eager vs ONNX Runtime, side by side in one run, for the model alone and for
`petseg predict` end to end (decode, resize, model, resize back, PNG), at each size asked for."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from petseg.bench import best_interleaved, report, significant
from petseg.deploy.onnx_export import OnnxPredictor, export_onnx
from petseg.errors import PetsegError
from petseg.evaluation.predict import collect_inputs, predict_paths
from petseg.evaluation.predictor import Predictor


def _model_only(predictor, batch: np.ndarray, batches: int):
    def run() -> int:
        for _ in range(batches):
            predictor.probabilities(batch)
        return batches * len(batch)

    return run


def _end_to_end(predictor, images: Path, out: Path, batch_size: int):
    return lambda: predict_paths(predictor, [images], out, batch_size=batch_size).written


def bench_infer(checkpoint: Path, images: Path, batch_size: int, sizes: list[int]) -> dict:
    files, _ = collect_inputs([images])
    if not files:
        raise PetsegError(f"--images: no files in {images}")
    eager = Predictor(checkpoint, "cpu")
    rng = np.random.default_rng(0)
    result: dict = {"model": eager.name, "images": len(files), "batch_size": batch_size, "sizes": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        photos = rng.integers(0, 256, (2, eager.image_size, eager.image_size, 3), dtype=np.uint8)
        for size in sizes:
            export_onnx(checkpoint, Path(tmp) / f"model-{size}.onnx", photos, size)  # a graph per input size
            runtime = OnnxPredictor(Path(tmp) / f"model-{size}.onnx")
            eager.image_size = size  # both resize the photos to this size
            batch = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
            batches = max(1, len(files) // batch_size)
            eager.probabilities(batch), runtime.probabilities(batch)  # warm-up
            eager_model, ort_model = best_interleaved(
                _model_only(eager, batch, batches), _model_only(runtime, batch, batches), 2
            )
            eager_e2e, ort_e2e = best_interleaved(
                _end_to_end(eager, images, Path(tmp) / "eager", batch_size),
                _end_to_end(runtime, images, Path(tmp) / "ort", batch_size),
                2,
            )
            figures = {"eager_model_img_s": eager_model, "ort_model_img_s": ort_model}
            figures |= {"eager_predict_img_s": eager_e2e, "ort_predict_img_s": ort_e2e}
            figures |= {"model_speedup": ort_model / eager_model, "predict_speedup": ort_e2e / eager_e2e}
            result["sizes"][str(size)] = {key: significant(value) for key, value in figures.items()}
            rows += [
                (f"{size} px: model, PyTorch eager", eager_model, "img/s"),
                (f"{size} px: model, ONNX Runtime", ort_model, "img/s"),
                (f"{size} px: ONNX Runtime / eager, model (target >= 1.5)", ort_model / eager_model, "x"),
                (f"{size} px: petseg predict, PyTorch eager", eager_e2e, "img/s"),
                (f"{size} px: petseg predict, ONNX Runtime", ort_e2e, "img/s"),
                (f"{size} px: ONNX Runtime / eager, predict (target >= 1.5)", ort_e2e / eager_e2e, "x"),
            ]
    return report("infer", rows, result)
