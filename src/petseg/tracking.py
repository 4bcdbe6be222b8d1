"""MLflow tracking shared by every stage; it never costs a stage its work.

Files on disk (checkpoints, metrics JSON, plots) are the source of truth. If the tracking backend
fails at any point, we warn once and carry on without it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from petseg.errors import first_line

# Fail fast against an unreachable server instead of MLflow's minutes of retries; users may override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# A stage prints its own one-line summaries; MLflow's per-artifact progress bars would bury them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EXPS_TMP_PARTS = (".dvc", "tmp", "exps")
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = (EXPERIMENT_KIND_TAG, "custom_model_development")


def project_root(cwd: str | Path | None = None) -> Path:
    """The workspace root, also from inside ``dvc exp run --temp/--queue``'s copy under .dvc/tmp/exps."""
    path = Path(cwd or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(EXPS_TMP_PARTS) + 1):
        if parts[i : i + len(EXPS_TMP_PARTS)] == EXPS_TMP_PARTS:
            return Path(*parts[:i])
    return path


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def dvc_experiment_name() -> str:
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


LIBRARIES = ("petseg", "torch", "torchvision", "numpy", "pillow", "onnx", "onnxruntime", "mlflow", "dvc")


def library_versions() -> dict[str, str]:
    """The Python and library versions this process runs with (from the installed metadata: no imports), recorded
    in every MLflow run and every checkpoint; requirements.lock pins them for a rebuild."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_tags(stage: str, model: str | None = None) -> dict[str, str]:
    tags = {
        "stage": stage,
        "dvc.exp_name": dvc_experiment_name(),
        # MLflow would record the absolute script path; keep machine paths out of tags.
        "mlflow.source.name": f"stages/{stage.split('_')[0]}.py",
    }
    if model:
        tags["model"] = model
    tags |= {f"version.{name}": value for name, value in library_versions().items()}
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = baseline
    if commit := git_commit():
        tags["git.commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


class Tracker:
    """An MLflow run as a context manager whose every call is best effort."""

    def __init__(
        self, experiment: str, run_name: str, tags: dict[str, str], enabled: bool = True, started: float | None = None
    ):
        """``started`` (time.time()) back-dates the run to when its work began, when it is logged afterwards."""
        self.experiment, self.run_name, self.tags, self.started = experiment, run_name, tags, started
        self.enabled = enabled and os.environ.get("PETSEG_MLFLOW") != "0"  # PETSEG_MLFLOW=0: user opted out
        self.uri = tracking_uri()
        # Compared, not read from the environment: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI itself.
        self.default_store = self.uri == default_tracking_uri()
        self.run_id: str | None = None
        self._mlflow: Any = None

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def _safe(self, what: str, call: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            self._disable(what, err)
            return None

    def _disable(self, what: str, err: BaseException) -> None:
        print(
            f"petseg: warning: MLflow tracking at {self.uri} failed during {what} ({first_line(err, 300)}); "
            "continuing without tracking, outputs on disk are complete",
            file=sys.stderr,
        )
        if self._mlflow is not None:
            with contextlib.suppress(Exception):
                self._mlflow.end_run(status="FAILED")
        self._mlflow = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import mlflow
            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            experiment = mlflow.get_experiment_by_name(self.experiment)
            if experiment is None:
                artifact_location = None
                if self.default_store:
                    # Beside the database, not in the cwd (a temporary copy during `dvc exp run --temp`).
                    artifact_location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=artifact_location)
            experiment = mlflow.set_experiment(self.experiment)
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                # MLflow 3 UIs that read the tag open the experiment on its runs, not on the GenAI view.
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *TRAINING_KIND)
            if self.started is None:
                self.run_id = mlflow.start_run(run_name=self.run_name, tags=self.tags).info.run_id
            else:
                run = mlflow.MlflowClient().create_run(
                    experiment.experiment_id,
                    start_time=int(self.started * 1000),
                    tags=self.tags,
                    run_name=self.run_name,
                )
                self.run_id = mlflow.start_run(run_id=run.info.run_id).info.run_id
        except Exception as err:  # noqa: BLE001
            self._disable("start", err)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self._safe("end", lambda: self._mlflow.end_run(status=status))

    def latest_run_id(self, stage: str, model: str) -> str | None:
        """The newest finished run of ``stage`` for ``model``: in this DVC experiment if it has one, else any
        (an experiment that did not retrain a model evaluates the checkpoint its baseline trained)."""

        def search(extra: str) -> str | None:
            runs = self._mlflow.search_runs(
                experiment_names=[self.experiment],
                filter_string=(
                    f"tags.stage = '{stage}' AND tags.model = '{model}' AND attributes.status = 'FINISHED'{extra}"
                ),
                order_by=["attributes.start_time DESC"],
                max_results=1,
                output_format="list",
            )
            return runs[0].info.run_id if runs else None

        same_experiment = f" AND tags.`dvc.exp_name` = '{dvc_experiment_name()}'"
        return self._safe("search_runs", lambda: search(same_experiment) or search(""))

    def best_effort(self, what: str, call: Callable[[Any], Any]) -> Any:
        """``call(mlflow)`` inside this run; a failure warns once and turns tracking off, like every call here."""
        return self._safe(what, lambda: call(self._mlflow))

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: ("null" if v is None else v) for k, v in params.items()}
        self._safe("log_params", lambda: self._mlflow.log_params(clean))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._safe("log_metrics", lambda: self._mlflow.log_metrics(metrics, step=step))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._safe("set_tags", lambda: self._mlflow.set_tags(tags))

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            if path.exists():
                self._safe("log_artifact", lambda p=path: self._mlflow.log_artifact(str(p), artifact_path))
