"""ONNX export of a trained model (dynamic batch and image size), checked against PyTorch on real test photos, and
an ONNX Runtime predictor with the Predictor's interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from petseg.errors import PetsegError
from petseg.evaluation.predictor import normalized
from petseg.fileio import atomic_file
from petseg.models import with_tta
from petseg.models.checkpoint import check_serving, first_line, load_trained_model

OPSET = 18
MAX_LOGIT_DIFF = 1e-4
MIN_MASK_AGREEMENT = 0.9999


def export_onnx(checkpoint: Path, out: Path, photos: np.ndarray) -> dict:
    """Write ``out`` with the checkpoint's test-time augmentation in its graph and its threshold in its metadata, and
    return the parity report. The file is checked before it replaces ``out``: parity below the bar is one error with
    the numbers, and whatever fails, an earlier ``out`` stays as it was."""
    import onnxruntime as ort  # imported here: the rest of petseg runs without it

    trained = load_trained_model(checkpoint)
    model, tta = with_tta(trained.model, trained.tta), trained.tta
    batch = normalized(photos, trained.mean, trained.std)
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    # The UNets halve the size five times: any multiple of 32 works, which is what the dims below say.
    height, width = torch.export.Dim("height", min=1, max=512), torch.export.Dim("width", min=1, max=512)
    # Traced at >= 64 px and a batch of 2: a 1-pixel bottleneck or a batch of 1 would be specialised away.
    side = max(64, trained.image_size)
    example = torch.zeros(2, 3, side, side)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch_dim, 2: 32 * height, 3: 32 * width}},
            opset_version=OPSET,
            verbose=False,
        )
    except Exception as err:  # the exporter raises its own error types, with pages of advice
        raise PetsegError(f"{checkpoint}: ONNX export failed ({first_line(err)})") from None
    meta = {"petseg.model": trained.name, "petseg.image_size": str(trained.image_size), "petseg.tta": tta}
    meta["petseg.threshold"] = repr(trained.threshold)
    meta |= {"petseg.mean": json.dumps(trained.mean), "petseg.std": json.dumps(trained.std)}
    proto = program.model_proto  # a fresh proto on every access: take it once
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


class OnnxPredictor:
    """An exported model run by ONNX Runtime, fed exactly as :class:`~petseg.evaluation.predictor.Predictor`."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map
            self.name, self.image_size = meta["petseg.model"], int(meta["petseg.image_size"])
            self.mean, self.std = tuple(json.loads(meta["petseg.mean"])), tuple(json.loads(meta["petseg.std"]))
            self.tta, self.threshold = meta["petseg.tta"], float(meta["petseg.threshold"])
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise PetsegError(f"{path}: not a petseg ONNX export ({str(err).splitlines()[0][:200]})") from None
        check_serving(path, self.image_size, self.mean, self.std, self.tta, self.threshold)

    def probabilities(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S, 3) at the training size -> float (N, S, S) pet probabilities."""
        logits = self.session.run(None, {"image": normalized(images, self.mean, self.std).numpy()})[0]
        return torch.sigmoid(torch.from_numpy(logits))[:, 0]
