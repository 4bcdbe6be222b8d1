"""The pipeline as users drive it: dvc repro, no-op rerun, experiments, metrics/plots diffs, MLflow read-back."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, SAMPLE, TINY_PARAMS, deep_merge

pytestmark = pytest.mark.slow

GIT_ENV = {
    "GIT_AUTHOR_NAME": "petseg-test",
    "GIT_AUTHOR_EMAIL": "test@petseg.invalid",
    "GIT_COMMITTER_NAME": "petseg-test",
    "GIT_COMMITTER_EMAIL": "test@petseg.invalid",
}


def sh(cwd: Path, *cmd: str, timeout: int = 900) -> str:
    env = (
        os.environ
        | GIT_ENV
        | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` = this venv
            "DVC_NO_ANALYTICS": "1",
            "PETSEG_PROGRESS": "0",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def copy_project(dest: Path) -> None:
    """What a clone holds: the tracked files of this checkout."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def declared_outputs(dvc_yaml: Path) -> list[str]:
    paths = []
    for stage in yaml.safe_load(dvc_yaml.read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def changed_stages(project: Path) -> set[str]:
    status = json.loads(sh(project, "dvc", "status", "--json"))
    return set(status)


def assert_status_follows_code_and_params(project: Path) -> None:
    """Speed and naming params re-run nothing; editing a module re-runs exactly the stages that import it."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["tracking"]["experiment"] = "renamed"
    params["resources"] = {key: value + 1 for key, value in params["resources"].items()}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(project) == set()
    params_file.write_text(original)

    for module, expected in {
        "src/petseg/training/losses.py": {"train@unet", "train@res34"},
        "src/petseg/evaluation/scoring.py": {"evaluate", "infer"},
        "src/petseg/deploy/card.py": {"evaluate"},  # release plumbing retrains nothing
        "src/petseg/data/layout.py": {"prepare", "train@unet", "train@res34", "evaluate", "infer", "export"},
    }.items():
        source = project / module
        text = source.read_text()
        source.write_text(text + "\n# an edit\n")
        assert changed_stages(project) == expected, module
        source.write_text(text)
    assert changed_stages(project) == set()


def tiny_project(tmp_path: Path, source: Path, extra: dict | None = None) -> Path:
    """A committed git checkout of this project with tiny params reading ``source``."""
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    tiny = deep_merge(TINY_PARAMS, deep_merge({"prepare": {"source": str(source)}}, extra or {}))
    (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, tiny), sort_keys=False))
    sh(project, "git", "init", "-q")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "tiny petseg")
    return project


def repro_writes_every_output(project: Path) -> None:
    first = sh(project, "dvc", "repro")
    assert ran_stages(first)[0] == "prepare"
    assert set(ran_stages(first)) == {"prepare", "train@unet", "train@res34", "evaluate", "infer", "export"}
    for path in declared_outputs(project / "dvc.yaml"):
        assert (project / path).exists(), f"declared output missing: {path}"
    again = sh(project, "dvc", "repro")
    assert ran_stages(again) == [] and "Data and pipelines are up to date." in again


def test_repro_runs_the_bundled_real_photos_end_to_end(tmp_path):
    """The shipped sample through every stage; the experiment mechanics below run on synthetic archives."""
    project = tiny_project(tmp_path, SAMPLE)
    repro_writes_every_output(project)
    counts = json.loads((project / "data" / "prepared" / "meta.json").read_text())["counts"]
    assert counts == {"train": 180, "valid": 20, "test": 198, "total": 398}  # the official lists, split 9:1
    with open(project / "reports" / "evaluate" / "per_breed.csv") as handle:
        breeds = {row["breed"] for row in csv.DictReader(handle)}
    assert breeds == {"Abyssinian", "american_bulldog"}


def test_repro_noop_experiments_diffs_and_mlflow(tmp_path, synthetic_archives):
    project = tiny_project(tmp_path, synthetic_archives[0], {"train": {"res34": {"epochs": 2}}})
    repro_writes_every_output(project)
    assert_status_follows_code_and_params(project)

    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline results")
    before = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    experiment = sh(project, "dvc", "exp", "run", "-n", "res34-faster", "-S", "train.res34.lr=0.03")
    assert set(ran_stages(experiment)) == {"train@res34", "evaluate", "infer", "export"}  # what the param touches
    after = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert after["unet"] == before["unet"] and after["res34"] != before["res34"]

    diff = json.loads(sh(project, "dvc", "metrics", "diff", "--json"))
    changed = diff["reports/evaluate/metrics.json"]
    assert any(key.startswith("res34.") for key in changed)
    assert not any(key.startswith("unet.") and value.get("diff") for key, value in changed.items())
    sh(project, "dvc", "plots", "diff", "HEAD", "-o", "dvc_plots")
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "vegaEmbed(" in page and not re.search(r"<script[^>]*src=", page)  # the charts draw offline
    for image in ("comparison.png", "dice_hist.png"):
        assert page.count(f'_reports_evaluate_{image}"') == 2, image  # workspace and HEAD, once each
    shown = sh(project, "dvc", "exp", "show", "--csv")
    assert "res34-faster" in shown

    # A temp experiment runs in a copy under .dvc/tmp/exps but logs into the workspace's MLflow database.
    sh(project, "dvc", "exp", "run", "--temp", "-n", "in-temp-copy", "-S", "train.res34.lr=0.01")

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("petseg").experiment_id
    runs = client.search_runs([experiment_id], max_results=100)
    names = {run.info.run_name for run in runs}
    assert {
        "workspace-prepare",
        "workspace-train-unet",
        "workspace-train-res34",
        "workspace-evaluate-unet",
        "workspace-evaluate-res34",
        "workspace-infer-res34",
        "res34-faster-train-res34",
        "in-temp-copy-train-res34",
    } <= names
    temp_run = next(run for run in runs if run.info.run_name == "in-temp-copy-train-res34")
    assert temp_run.data.tags["dvc.exp_name"] == "in-temp-copy" and temp_run.data.tags.get("dvc.baseline_rev")
    evaluate_run = next(run for run in runs if run.info.run_name == "res34-faster-evaluate-res34")
    training_run = next(run for run in runs if run.info.run_name == "res34-faster-train-res34")
    assert evaluate_run.data.tags["training_run_id"] == training_run.info.run_id
    unet_evaluate = next(run for run in runs if run.info.run_name == "res34-faster-evaluate-unet")
    unet_training = next(run for run in runs if run.info.run_name == "workspace-train-unet")
    assert unet_evaluate.data.tags["training_run_id"] == unet_training.info.run_id  # not retrained: baseline's run
    assert "test_dice_per_image" in evaluate_run.data.metrics
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing logged into the temp copy
    workspace_artifacts = (project / "mlartifacts").as_uri()
    assert client.get_experiment(experiment_id).artifact_location == workspace_artifacts
    assert temp_run.info.artifact_uri.startswith(workspace_artifacts + "/")
    assert {a.path for a in client.list_artifacts(temp_run.info.run_id)} >= {"history.csv", "metrics.json"}
    assert not (project / "mlruns").exists() and not list((project / ".dvc" / "tmp").rglob("mlruns"))


def test_a_make_preset_keeps_its_params_in_the_experiment_not_in_params_yaml(tmp_path, synthetic_archives):
    """`make repro-full` with its overrides swapped for tiny ones (the make variable FULL): the mechanism every
    preset shares; what each preset sets is tested in test_recipes.py."""
    project = tiny_project(tmp_path, synthetic_archives[0])
    (project / ".stamp").touch()  # the virtualenv running these tests stands in for the one make would build
    committed = (project / "params.yaml").read_text()

    broken = subprocess.run(
        ["make", "repro-full", "STAMP=.stamp", f"FULL=-S prepare.source={tmp_path / 'nowhere'}"],
        cwd=project,
        env=os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert broken.returncode != 0 and "prepare.source" in broken.stdout + broken.stderr
    assert (project / "params.yaml").read_text() == committed  # put back after a failed run too

    tiny = f"FULL=-S prepare.source={synthetic_archives[0]} -S prepare.image_size=64"
    out = sh(project, "make", "repro-full", "STAMP=.stamp", tiny)
    assert "Ran experiment(s): full" in out
    assert (project / "params.yaml").read_text() == committed
    assert sh(project, "git", "status", "--porcelain", "--", "params.yaml") == ""
    rows = list(csv.DictReader(io.StringIO(sh(project, "dvc", "exp", "show", "--csv"))))
    preset = next(row for row in rows if row["Experiment"] == "full")
    workspace = next(row for row in rows if row["rev"] == "workspace")
    assert preset["prepare.image_size"] == "64" and workspace["prepare.image_size"] == "32"
    assert preset["res34.dice_per_image"] == workspace["res34.dice_per_image"] != ""  # its outputs are here
    assert "prepare" in json.loads(sh(project, "dvc", "status", "--json"))  # params.yaml is the workspace's again
