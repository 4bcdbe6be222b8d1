"""Checkpoints as plain tensors and primitives: saved atomically, loaded with weights_only=True."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from petseg.errors import PetsegError
from petseg.fileio import atomic_file

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
