"""A model file to its predictor: an ``.onnx`` runs on ONNX Runtime without importing PyTorch, a checkpoint on
PyTorch. Both serve what the model carries (TTA, threshold) and take the same uint8 batches."""

from __future__ import annotations

from pathlib import Path

from petseg.errors import PetsegError

BACKENDS = ("torch", "onnxruntime")


def backend_of(path: Path) -> str:
    return "onnxruntime" if Path(path).suffix == ".onnx" else "torch"


def load_predictor(path: Path, backend: str | None = None, device: str = "cpu", tta: str | None = None):
    """The predictor of ``path`` (``backend`` by its suffix unless given); ``tta`` overrides a checkpoint's, and an
    export's only if it names the one built into its graph. ``device`` (auto, cpu, cuda) is PyTorch's."""
    if (backend or backend_of(path)) == "onnxruntime":
        from petseg.deploy.onnx_runtime import OnnxPredictor

        predictor = OnnxPredictor(path)
        if tta not in (None, predictor.tta):
            raise PetsegError(f"--tta {tta}: {path} was exported with tta {predictor.tta}, built in")
        return predictor
    from petseg.evaluation.predictor import Predictor
    from petseg.runtime import resolve_device

    return Predictor(path, resolve_device(device), tta)
