"""`petseg bench infer`: every backend a trained model can be served on, side by side in one run (Ultralytics'
`benchmark` in spirit): per input size a row per backend with its file size, the model alone and `petseg predict`
end to end (decode, resize, model, resize back, PNG) in img/s, and its test Dice per image on the prepared split."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from petseg.bench import BENCH_DIR, best_interleaved, significant
from petseg.data.dataset import PreparedSplit
from petseg.data.photos import resize_photo
from petseg.deploy.onnx_export import export_onnx
from petseg.deploy.onnx_runtime import OnnxPredictor
from petseg.deploy.quantize import dice_per_image, quantize_int8
from petseg.errors import PetsegError
from petseg.evaluation.predict import collect_inputs, predict_paths
from petseg.evaluation.predictor import Predictor
from petseg.fileio import write_json


def _model_only(predictor, batch: np.ndarray, batches: int):
    def run() -> int:
        for _ in range(batches):
            predictor.probabilities(batch)
        return batches * len(batch)

    return run


def _end_to_end(predictor, images: Path, out: Path, batch_size: int):
    return lambda: predict_paths(predictor, [images], out, batch_size=batch_size).written


def _at_size(split: PreparedSplit, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split's photos and masks at ``size`` (photos bilinear, masks nearest), for scoring at any size."""
    if split.images.shape[1] == size:
        return np.asarray(split.images), np.asarray(split.masks)
    images = [resize_photo(Image.fromarray(image), size) for image in split.images]
    masks = [np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)) for mask in split.masks]
    return np.stack(images), np.stack(masks)


def _backends(checkpoint: Path, size: int, valid: np.ndarray, tmp: Path, test: tuple) -> tuple[dict, dict, dict]:
    """({backend: predictor}, {backend: file}, {backend: test Dice}) at ``size``: PyTorch eager, ONNX Runtime fp32 and
    int8 (calibrated on the validation photos; shown whether or not it passes the export stage's gate, whose report
    already holds both ONNX files' Dice)."""
    eager = Predictor(checkpoint, "cpu")
    eager.image_size = size  # every backend resizes the photos to this size
    fp32, int8 = tmp / f"model-{size}.onnx", tmp / f"model-{size}.int8.onnx"
    export_onnx(checkpoint, fp32, valid[:2], size)
    gate = quantize_int8(fp32, int8, valid, *test)
    predictors = {"torch": eager, "onnxruntime": OnnxPredictor(fp32), "onnxruntime-int8": OnnxPredictor(int8, False)}
    dice = {"torch": dice_per_image(eager, *test), "onnxruntime": gate["fp32_dice_per_image"]}
    dice["onnxruntime-int8"] = gate["int8_dice_per_image"]
    return predictors, {"torch": checkpoint, "onnxruntime": fp32, "onnxruntime-int8": int8}, dice


def bench_infer(checkpoint: Path, images: Path, prepared: Path, batch_size: int, sizes: list[int]) -> dict:
    files, _ = collect_inputs([images])
    if not files:
        raise PetsegError(f"--images: no files in {images}")
    test_split = PreparedSplit(prepared, "test").require_samples("score the backends on")
    valid_split = PreparedSplit(prepared, "valid").require_samples("calibrate int8 on")
    rng = np.random.default_rng(0)
    result: dict = {"images": len(files), "test_images": len(test_split), "batch_size": batch_size, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="petseg-bench-") as tmp:
        for size in sizes:
            test = _at_size(test_split, size)
            valid = _at_size(valid_split, size)[0]
            predictors, model_files, dice = _backends(checkpoint, size, valid, Path(tmp), test)
            result["model"] = predictors["torch"].name
            batch = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
            batches = max(1, len(files) // batch_size)
            for predictor in predictors.values():
                predictor.probabilities(batch)  # warm-up
            model_rates = best_interleaved(*(_model_only(p, batch, batches) for p in predictors.values()), rounds=2)
            outs = [Path(tmp) / f"out-{name}" for name in predictors]
            runs = (_end_to_end(p, images, out, batch_size) for p, out in zip(predictors.values(), outs, strict=True))
            predict_rates = best_interleaved(*runs, rounds=2)
            rows = {}
            for name, model_rate, predict_rate in zip(predictors, model_rates, predict_rates, strict=True):
                rows[name] = {
                    "file_mb": model_files[name].stat().st_size / 2**20,
                    "model_img_s": model_rate,
                    "predict_img_s": predict_rate,
                    "dice_per_image": dice[name],
                }
            result["sizes"][str(size)] = {b: {k: significant(v) for k, v in row.items()} for b, row in rows.items()}
    _print_table(result)
    write_json(BENCH_DIR / "infer.json", {"bench": "infer", **result})
    return result


def _print_table(result: dict) -> None:
    print(f"petseg bench infer: {result['model']}, batch {result['batch_size']}, {result['images']} photos end to end,")
    print(f"  test Dice per image on {result['test_images']} prepared test photos (difference to torch)")
    header = f"  {'size':>4}  {'backend':<17}{'file MB':>8}{'model img/s':>13}{'x':>6}{'predict img/s':>15}{'x':>6}"
    print(header + f"{'Dice':>8}{'diff':>9}")
    for size, rows in result["sizes"].items():
        torch_row = rows["torch"]
        for backend, row in rows.items():
            model_x = row["model_img_s"] / torch_row["model_img_s"]
            predict_x = row["predict_img_s"] / torch_row["predict_img_s"]
            diff = row["dice_per_image"] - torch_row["dice_per_image"]
            print(
                f"  {size:>4}  {backend:<17}{row['file_mb']:>8.1f}{row['model_img_s']:>13.1f}{model_x:>6.2f}"
                f"{row['predict_img_s']:>15.1f}{predict_x:>6.2f}{row['dice_per_image']:>8.4f}{diff:>+9.4f}"
            )
    print(json.dumps({"bench": "infer", **result}, sort_keys=True))
