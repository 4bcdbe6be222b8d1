"""An exported model run by ONNX Runtime with the Predictor's interface, and nothing of PyTorch: serving an
``.onnx`` needs only onnxruntime, NumPy and Pillow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from petseg.errors import PetsegError, first_line
from petseg.serving import check_serving, normalized, sigmoid

GATE_KEY = "petseg.int8_gate"  # an int8 export's accuracy gate: "passed", or why it failed


class OnnxPredictor:
    """An ``.onnx`` from the export stage, fed exactly as :class:`~petseg.evaluation.predictor.Predictor`; its TTA is
    in the graph and its threshold in the metadata."""

    def __init__(self, path: str | Path, check_gate: bool = True):
        import onnxruntime as ort  # imported here: the rest of petseg runs without it

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            meta = self.session.get_modelmeta().custom_metadata_map
            self.name, self.image_size = meta["petseg.model"], int(meta["petseg.image_size"])
            self.mean, self.std = tuple(json.loads(meta["petseg.mean"])), tuple(json.loads(meta["petseg.std"]))
            self.tta, self.threshold = meta["petseg.tta"], float(meta["petseg.threshold"])
            self.precision, gate = meta.get("petseg.precision", "fp32"), meta.get(GATE_KEY, "passed")
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise PetsegError(f"{path}: not a petseg ONNX export ({first_line(err)})") from None
        check_serving(path, self.image_size, self.mean, self.std, self.tta, self.threshold)
        if check_gate and gate != "passed":
            raise PetsegError(f"{path}: refused: its accuracy gate {gate}; serve the fp32 export instead")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) at the training size -> float32 (N, S, S) pet probabilities."""
        logits = self.session.run(None, {"image": normalized(images, self.mean, self.std)})[0]
        return sigmoid(logits[:, 0])
