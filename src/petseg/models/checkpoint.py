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
from petseg.models import model_from_weights, normalization

FORMAT = "petseg-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a petseg checkpoint; anything else (or a pickle carrying code) is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise PetsegError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice to retry with weights_only=False is not for us
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        detail = " ".join(detail.split()) or "unsupported pickle content"
        raise PetsegError(
            f"{path}: refused: not a plain-tensor checkpoint, it holds pickled objects or code ({detail[:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise PetsegError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PetsegError(f"{path}: not a petseg checkpoint (train one with `dvc repro` or `python -m stages.train`)")
    if data.get("version") != VERSION:
        raise PetsegError(f"{path}: checkpoint version {data.get('version')} not supported (expected {VERSION})")
    return data


def model_payload(name: str, model_params: dict, image_size: int, state_dict: dict) -> dict[str, Any]:
    """What a trained model needs to be rebuilt and fed like in training."""
    mean, std = normalization(model_params)
    return {
        "model": {"name": name, "params": model_params},
        "image_size": image_size,
        "normalization": {"mean": list(mean), "std": list(std)},
        "state_dict": state_dict,
    }


@dataclass(frozen=True)
class TrainedModel:
    name: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: torch.nn.Module


def load_trained_model(path: str | Path) -> TrainedModel:
    """A model checkpoint rebuilt as an eval-mode model on the CPU."""
    ckpt = load_checkpoint(path)
    try:
        name, params = ckpt["model"]["name"], ckpt["model"]["params"]
        norm = ckpt["normalization"]
        image_size, mean, std = int(ckpt["image_size"]), tuple(norm["mean"]), tuple(norm["std"])
        state_dict = ckpt["state_dict"]
    except (KeyError, TypeError, ValueError):
        raise PetsegError(f"{path}: not a model checkpoint (a resume point? use models/<model>.pt)") from None
    return TrainedModel(name, image_size, mean, std, model_from_weights(name, params, state_dict))
