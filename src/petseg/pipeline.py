"""Where the DVC pipeline keeps its files, and how its stages name their MLflow runs: shared stage plumbing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from petseg.config import Params
from petseg.fileio import exclusive_lock
from petseg.schema import to_flat_dict
from petseg.tracking import Tracker, dvc_experiment_name, run_tags

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")


def checkpoint_path(model: str) -> Path:
    return MODELS_DIR / f"{model}.pt"


def resume_path(model: str) -> Path:
    return MODELS_DIR / f"{model}.last.pt"


def training_lock(model: str):
    """One training of ``model`` at a time in this workspace (two would race on the same checkpoint files)."""
    return exclusive_lock(MODELS_DIR / f".{model}.lock", f"training of {model}")


def training_params(params: Params, model: str) -> dict[str, Any]:
    """The dotted params a training run logs; a local weights file is logged by name, not by path on this machine."""
    logged = to_flat_dict(params.train.common, "train.common.") | to_flat_dict(
        params.train.model(model), f"train.{model}."
    )
    if logged.get(f"train.{model}.weights_path"):
        logged[f"train.{model}.weights_path"] = Path(logged[f"train.{model}.weights_path"]).name
    return logged


def run_name(stage: str, model: str | None = None) -> str:
    """``<DVC experiment>-<stage>[-<model>]``, the same shape for every stage."""
    return "-".join(part for part in (dvc_experiment_name(), stage, model) if part)


def stage_tracker(
    params: Params, stage: str, model: str | None = None, enabled: bool = True, started: float | None = None
) -> Tracker:
    tag = f"{stage}_{model}" if stage == "train" else stage  # training runs are looked up by `train_<model>`
    tags = run_tags(tag, model)
    return Tracker(params.tracking.experiment, run_name(stage, model), tags, enabled=enabled, started=started)
