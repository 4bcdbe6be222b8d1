"""Checkpoints as plain tensors and primitives: saved atomically, loaded with weights_only=True.

A model checkpoint (``models/<model>.pt``) holds the model payload: what training writes and the Predictor reads.
A resume point (``models/<model>.last.pt``) holds the training state as well.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from petseg.errors import PetsegError
from petseg.fileio import atomic_file
from petseg.models import build_model, model_from_weights, normalization
from petseg.serving import check_serving

FORMAT = "petseg-checkpoint"
VERSION = 2  # 2: the checkpoint carries how it is served (tta, threshold)


def non_finite_count(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(non-finite values, all values) over the floating-point tensors of ``state_dict``. One fused norm over them
    all first (NaN or inf when any value is): counting tensor by tensor made the Trainer's check after every epoch
    cost ~50 ms for a ResNet34-UNet on a 2-core CPU."""
    floats = [t for t in state_dict.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    total = sum(t.numel() for t in floats)
    if not floats or torch.isfinite(torch.nn.utils.get_total_norm(floats)):
        return 0, total
    return sum(int((~torch.isfinite(t)).sum()) for t in floats), total  # or huge but finite: the norm overflowed


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: on any failure (a full disk, say) the previous file at ``path`` stays as it was."""
    try:
        with atomic_file(path, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as a RuntimeError
        reason = first_line(err)
        if "disk" not in reason.lower() and "space" not in reason.lower():
            reason += " (is the disk full?)"
        raise PetsegError(f"{path}: could not be written: {reason}; the previous version is kept") from None


def first_line(err: BaseException) -> str:
    """An exception's first line without torch's advice to load untrusted files with weights_only=False."""
    text = str(err).split("Re-running `torch.load` with", 1)[0].split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a petseg checkpoint; anything else (or a pickle carrying code) is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"{path}: checkpoint not found")
    if not _is_torch_file(path):
        raise PetsegError(f"{path}: not a checkpoint at all (neither a torch zip nor a torch pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice to retry with weights_only=False is not for us
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_torch_file(path):
            raise PetsegError(
                f"{path}: not a checkpoint at all (neither a torch zip file nor a torch pickle)"
            ) from None
        detail = " ".join(first_line(err).split("Check the documentation", 1)[0].split())
        raise PetsegError(
            f"{path}: refused: not a plain-tensor checkpoint, it holds pickled objects or code ({detail})"
        ) from None
    except Exception as err:  # a truncated zip, an empty file, a header only: torch raises many kinds
        raise PetsegError(f"{path}: not a readable checkpoint ({first_line(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PetsegError(f"{path}: not a petseg checkpoint (train one with `dvc repro` or `python -m stages.train`)")
    if data.get("version") != VERSION:
        raise PetsegError(f"{path}: checkpoint version {data.get('version')} not supported (expected {VERSION})")
    return data


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, long ago, a pickle starting with protocol byte 0x80)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def model_payload(
    name: str, model_params: dict, image_size: int, state_dict: dict, tta: str, threshold: float
) -> dict[str, Any]:
    """What a trained model needs to be rebuilt, fed like in training and served as it was scored."""
    mean, std = normalization(model_params)
    return {
        "model": {"name": name, "params": model_params},
        "image_size": image_size,
        "normalization": {"mean": list(mean), "std": list(std)},
        "serving": {"tta": tta, "threshold": threshold},
        "state_dict": state_dict,
    }


@dataclass(frozen=True)
class TrainedModel:
    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tta: str  # what the checkpoint is scored and served with
    threshold: float
    model: torch.nn.Module


def load_trained_model(path: str | Path) -> TrainedModel:
    """A model checkpoint, validated (format, model, shapes, finite weights, a sane image size), rebuilt as an
    eval-mode model on the CPU. Anything wrong is one line naming the file."""
    ckpt = load_checkpoint(path)
    try:
        name, params = str(ckpt["model"]["name"]), dict(ckpt["model"]["params"])
        norm = ckpt["normalization"]
        image_size, mean, std = ckpt["image_size"], tuple(norm["mean"]), tuple(norm["std"])
        tta, threshold = ckpt["serving"]["tta"], ckpt["serving"]["threshold"]
        state_dict = dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError):
        raise PetsegError(f"{path}: not a model checkpoint (a resume point? use models/<model>.pt)") from None
    check_serving(path, image_size, mean, std, tta, threshold)
    bad, total = non_finite_count(state_dict)
    if bad:
        raise PetsegError(f"{path}: refused: {bad} of {total} weights are NaN or infinite (training diverged)")
    _check_shapes(path, name, params, state_dict)
    model = model_from_weights(name, params, state_dict)
    return TrainedModel(name, image_size, tuple(map(float, mean)), tuple(map(float, std)), tta, threshold, model)


def _check_shapes(path: str | Path, name: str, params: dict, state_dict: dict) -> None:
    """The weights against the model their params describe, built on the meta device: no memory is allocated,
    so absurd params (a width of a million) cannot exhaust it."""
    try:
        with torch.device("meta"):
            skeleton = build_model(name, **{k: v for k, v in params.items() if k not in ("pretrained", "weights_path")})
    except (TypeError, ValueError, RuntimeError) as err:
        raise PetsegError(f"{path}: model params {params} do not build a {name} ({first_line(err)})") from None
    expected = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if got != expected:
        key = next(k for k in sorted(expected.keys() | got.keys()) if expected.get(k) != got.get(k))
        raise PetsegError(
            f"{path}: weights do not fit a {name} model with {params} "
            f"({key}: {got.get(key, 'missing')} in the file, {expected.get(key, 'not in the model')} expected)"
        )
