"""ONNX export of a trained model (any batch, the model's own image size), checked against PyTorch on real test
photos before it is written."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from petseg.errors import PetsegError, first_line
from petseg.fileio import atomic_file
from petseg.models import with_tta
from petseg.models.checkpoint import load_trained_model
from petseg.serving import normalized

OPSET = 18
MAX_LOGIT_DIFF = 1e-4
MIN_MASK_AGREEMENT = 0.9999


def export_onnx(checkpoint: Path, out: Path, photos: np.ndarray, size: int = 0) -> dict:
    """Write ``out`` with the checkpoint's test-time augmentation in its graph and its threshold in its metadata, and
    return the parity report. The file is checked before it replaces ``out``: parity below the bar is one error with
    the numbers, and whatever fails, an earlier ``out`` stays as it was.

    The graph takes any batch of ``size`` x ``size`` photos (0: the checkpoint's image size, which every way out
    resizes photos to): a fixed height and width let ONNX Runtime plan every convolution once. Exported with the
    TorchScript-based exporter, much faster than the dynamo one for these plain convolutional models (see
    docs/performance.md); the parity check holds either to PyTorch's outputs."""
    import onnx
    import onnxruntime as ort  # imported here: the rest of petseg runs without them

    trained = load_trained_model(checkpoint)
    model, tta, side = with_tta(trained.model, trained.tta), trained.tta, size or trained.image_size
    batch = torch.from_numpy(normalized(photos, trained.mean, trained.std))
    if batch.shape[-1] != side:
        batch = torch.nn.functional.interpolate(batch, size=(side, side), mode="bilinear")
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice: dynamo=True is the new default, not a problem
            torch.onnx.export(
                model,
                (torch.zeros(2, 3, side, side),),
                buffer,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
            )
    except Exception as err:  # the exporter raises its own error types, with pages of advice
        raise PetsegError(f"{checkpoint}: ONNX export failed ({first_line(err)})") from None
    meta = {"petseg.model": trained.name, "petseg.image_size": str(side), "petseg.tta": tta}
    meta["petseg.threshold"] = repr(trained.threshold)
    meta |= {"petseg.mean": json.dumps(trained.mean), "petseg.std": json.dumps(trained.std)}
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # checked before it is written
    with torch.no_grad():
        expected = model(batch).numpy()
    report = parity(expected, session.run(None, {"image": batch.numpy()})[0], trained.threshold, out)
    with atomic_file(out, "wb") as handle:
        handle.write(data)
    return report


def parity(expected: np.ndarray, got: np.ndarray, threshold: float, where: Path) -> dict:
    """Logits within 1e-4 (relative to the logits' own scale once they exceed 1: float32 keeps ~7 digits, so a model
    whose logits reach 1e7 cannot agree to 1e-4 absolutely) and the same masks on >= 99.99 % of pixels."""
    logit = float(np.log(threshold / (1 - threshold)))
    max_diff = float(np.abs(expected - got).max())
    allowed = MAX_LOGIT_DIFF * max(1.0, float(np.abs(expected).max()))
    agreement = float(np.mean((expected > logit) == (got > logit)))
    report = {"opset": OPSET, "max_abs_logit_diff": max_diff, "mask_agreement": agreement, "images": len(expected)}
    if max_diff > allowed or agreement < MIN_MASK_AGREEMENT:
        raise PetsegError(
            f"{where}: ONNX Runtime disagrees with PyTorch: max |logit difference| {max_diff:.3g} (allowed "
            f"{allowed:.3g}), masks agree on {agreement:.6%} of pixels (needed {MIN_MASK_AGREEMENT:.2%})"
        )
    return report
