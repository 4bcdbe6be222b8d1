"""Static int8 quantization of an exported model (ONNX Runtime's QDQ format, per-channel weights, symmetric
activation ranges), calibrated on photos of the validation split, and its accuracy gate: test Dice per image within
:data:`MAX_DICE_DROP` of the fp32 export's, measured before the file is written. A file that fails the gate is marked
so in its metadata and refused by :class:`~petseg.deploy.onnx_runtime.OnnxPredictor`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from petseg.data.layout import IGNORE
from petseg.deploy.onnx_runtime import GATE_KEY, OnnxPredictor
from petseg.errors import PetsegError, first_line
from petseg.evaluation.metrics import confusion_counts, summarize
from petseg.fileio import atomic_file
from petseg.serving import Backend, normalized

MAX_DICE_DROP = 0.005
CALIBRATION_BATCH = 8


def dice_per_image(predictor: Backend, images: np.ndarray, masks: np.ndarray, batch_size: int = 16) -> float:
    """Test Dice per image of what ``predictor`` serves, by the evaluate stage's metric code."""
    counts = []
    for start in range(0, len(images), batch_size):
        probabilities = predictor.probabilities(np.asarray(images[start : start + batch_size]))
        truth = torch.from_numpy(np.array(masks[start : start + batch_size]))  # a copy: a memmap is read-only
        counts.append(confusion_counts(torch.from_numpy(probabilities > predictor.threshold), truth, IGNORE))
    return summarize(torch.cat(counts))["dice_per_image"]


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, test_images: np.ndarray, test_masks) -> dict:
    """Write ``out``, the int8 twin of the export ``fp32``, and return the gate's report (Dice of both, kept)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = OnnxPredictor(fp32)

    class Photos(CalibrationDataReader):
        def __init__(self):
            starts = range(0, len(calibration), CALIBRATION_BATCH)
            self.batches = iter([calibration[s : s + CALIBRATION_BATCH] for s in starts])

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": normalized(batch, source.mean, source.std)}

    with tempfile.TemporaryDirectory(prefix="petseg-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared),
                str(quantized),
                Photos(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # Symmetric activation ranges: more mask pixels agree with PyTorch on a small, barely trained model
                # (tests/test_deploy.py) than with asymmetric ones, and the graph runs the same kernels.
                extra_options={"ActivationSymmetric": True},
            )
        except Exception as err:  # the quantizer raises its own error types
            raise PetsegError(f"{fp32}: int8 quantization failed ({first_line(err)})") from None
        model = onnx.load(str(quantized))
        source_meta = list(source.session.get_modelmeta().custom_metadata_map.items())
        _set_metadata(model, [*source_meta, ("petseg.precision", "int8")])
        onnx.save(model, str(quantized))
        report = {"fp32_dice_per_image": dice_per_image(source, test_images, test_masks)}
        tested = OnnxPredictor(quantized, check_gate=False)
        report["int8_dice_per_image"] = dice_per_image(tested, test_images, test_masks)
    drop = report["fp32_dice_per_image"] - report["int8_dice_per_image"]
    report |= {"dice_drop": drop, "max_dice_drop": MAX_DICE_DROP, "kept": drop <= MAX_DICE_DROP}
    report |= {"calibration_images": len(calibration), "test_images": len(test_images)}
    verdict = "passed" if report["kept"] else f"failed (test Dice {drop:.4f} below the fp32 export's)"
    _set_metadata(model, [*source_meta, ("petseg.precision", "int8"), (GATE_KEY, verdict)])
    with atomic_file(out, "wb") as handle:
        handle.write(model.SerializeToString())
    return report


def _set_metadata(model, pairs: list[tuple[str, str]]) -> None:
    del model.metadata_props[:]
    for key, value in pairs:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
