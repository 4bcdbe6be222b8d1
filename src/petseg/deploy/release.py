"""What the evaluate stage hands on for each model: a registered version that `petseg promote` can gate, with its
test scores on the version and on the logged model, and a model card built from what the pipeline wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from petseg.config import Params
from petseg.data.layout import read_meta
from petseg.deploy.card import model_card
from petseg.deploy.registry import log_and_register, registered_name, version_tags
from petseg.fileio import write_text
from petseg.models.checkpoint import load_checkpoint
from petseg.runtime import describe_machine, machine
from petseg.schema import to_flat_dict
from petseg.tracking import Tracker, dvc_experiment_name, git_commit


def mlflow_scores(metrics: dict) -> dict[str, float]:
    """The numeric test scores of one model (its details.json entry) as MLflow metrics, `test_` before each."""
    return {f"test_{k}": v for k, v in metrics.items() if isinstance(v, int | float)}


def log_evaluation(
    tracker: Tracker, params: Params, model: str, metrics: dict, checkpoint: Path, prepared_dir: Path, photo
) -> None:
    """The evaluate run of ``model``: its test metrics, linked to the run that trained it, and the evaluated weights
    as a registered version of `petseg-<model>` (a pyfunc that takes photos) tagged for `petseg promote`; the scores
    are also attached to that logged model, so MLflow's Models view shows each model's test Dice."""
    if training_run := tracker.latest_run_id(f"train_{model}", model):
        tracker.set_tags({"training_run_id": training_run})
    tracker.log_params(to_flat_dict(params.evaluate, "evaluate."))
    tracker.log_metrics(mlflow_scores(metrics))
    digest = hashlib.sha256(json.dumps(to_flat_dict(params), sort_keys=True, default=str).encode()).hexdigest()
    extra = {"git_commit": git_commit() or "unknown", "dvc_exp_name": dvc_experiment_name(), "params_digest": digest}
    tags = version_tags(metrics, read_meta(prepared_dir)["split_lists"], extra)

    def register(mlflow) -> str:
        version, model_id = log_and_register(mlflow, model, checkpoint, photo, tags)
        mlflow.log_metrics(mlflow_scores(metrics), model_id=model_id)
        return version

    if version := tracker.best_effort("registering the model", register):
        print(f"evaluate: {model}: registered {registered_name(model)} version {version}")


def write_model_card(
    model: str, metrics: dict, eval_images_per_second: float, checkpoint: Path, prepared_dir: Path, reports_dir: Path
) -> Path:
    """reports/cards/<model>.md from what the pipeline wrote: prepare's report, the checkpoint's recipe, the
    evaluation, and the speeds measured in training and evaluation."""
    meta = read_meta(prepared_dir)  # counts, size, boundary rule and split hash travel with the data itself
    report_path = reports_dir / "prepare.json"
    prepared = json.loads(report_path.read_text()) if report_path.exists() else {}
    data = meta | {"split_hash": meta["split_lists"], "source": prepared.get("source", "unknown")}
    data["species"] = prepared.get("species", "unknown")
    trained = load_checkpoint(checkpoint)
    recipe, environment = trained.get("recipe", {}), trained.get("environment", {})
    timing_path = reports_dir / "train" / model / "timing.json"
    speed = {"evaluation (test split)": (eval_images_per_second, describe_machine(machine()))}
    if timing_path.exists():  # training may have run on another machine (a GPU, an earlier run): name its own
        timing = json.loads(timing_path.read_text())
        speed["training (mean over epochs)"] = (timing["images_per_second"], timing.get("machine", "not recorded"))
    out = reports_dir / "cards" / f"{model}.md"
    write_text(out, model_card(model, data, recipe, metrics, speed, environment))
    return out
