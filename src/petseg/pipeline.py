"""Where the DVC pipeline keeps its files, and how its stages name their MLflow runs: shared stage plumbing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from petseg.config import Params
from petseg.data.layout import read_meta
from petseg.deploy.card import model_card
from petseg.deploy.registry import log_and_register, registered_name, version_tags
from petseg.fileio import exclusive_lock, write_text
from petseg.models.checkpoint import load_checkpoint
from petseg.schema import to_flat_dict
from petseg.tracking import Tracker, dvc_experiment_name, git_commit, run_tags

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


def stage_tracker(params: Params, stage: str, model: str | None = None, enabled: bool = True) -> Tracker:
    tag = f"{stage}_{model}" if stage == "train" else stage  # training runs are looked up by `train_<model>`
    return Tracker(params.tracking.experiment, run_name(stage, model), run_tags(tag, model), enabled=enabled)


def log_evaluation(params: Params, model: str, metrics: dict, outputs: list[Path], example_photo) -> None:
    """The evaluate run of ``model``: its test metrics, linked to the run that trained it, and the evaluated weights
    as a registered version of `petseg-<model>` (a pyfunc that takes photos) tagged for `petseg promote`."""
    with stage_tracker(params, "evaluate", model) as tracker:
        if training_run := tracker.latest_run_id(f"train_{model}", model):
            tracker.set_tags({"training_run_id": training_run})
        tracker.log_params(to_flat_dict(params.evaluate, "evaluate."))
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        tracker.log_artifacts(outputs)
        digest = hashlib.sha256(json.dumps(to_flat_dict(params), sort_keys=True, default=str).encode()).hexdigest()
        extra = {
            "git_commit": git_commit() or "unknown",
            "dvc_exp_name": dvc_experiment_name(),
            "params_digest": digest,
        }
        tags = version_tags(metrics, read_meta(PREPARED_DIR)["split_lists"], extra)
        threshold = params.evaluate.threshold

        def register(mlflow) -> str:
            return log_and_register(mlflow, model, checkpoint_path(model), example_photo, threshold, tags)

        if version := tracker.best_effort("registering the model", register):
            print(f"evaluate: {model}: registered {registered_name(model)} version {version}")


def write_model_card(model: str, metrics: dict, eval_images_per_second: float, out: Path) -> Path:
    """reports/cards/<model>.md from what the pipeline wrote: prepare's report, the checkpoint's recipe, the
    evaluation, and the speeds measured in training and evaluation."""
    meta = read_meta(PREPARED_DIR)  # counts, size, boundary rule and split hash travel with the data itself
    report_path = REPORTS_DIR / "prepare.json"
    prepared = json.loads(report_path.read_text()) if report_path.exists() else {}
    data = meta | {"split_hash": meta["split_lists"], "source": prepared.get("source", "unknown")}
    data["species"] = prepared.get("species", "unknown")
    recipe = load_checkpoint(checkpoint_path(model)).get("recipe", {})
    timing_path = REPORTS_DIR / "train" / model / "timing.json"
    speed = {"evaluation (test split, this machine)": eval_images_per_second}
    if timing_path.exists():
        speed["training (mean over epochs)"] = json.loads(timing_path.read_text())["images_per_second"]
    write_text(out, model_card(model, data, recipe, metrics, speed))
    return out
