from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import free_port, run_stage

from petseg.models import model_from_weights
from petseg.models.checkpoint import load_checkpoint
from petseg.runtime import machine
from petseg.tracking import Tracker, project_root, run_tags


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def assert_training_run_logged(uri: str, download_to: Path, name: str = "unet") -> None:
    import mlflow

    client = client_for(uri)
    experiment = client.get_experiment_by_name("petseg")
    runs = client.search_runs([experiment.experiment_id], f"tags.stage = 'train_{name}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == f"workspace-train-{name}" and run.info.status == "FINISHED"
    assert run.data.tags["dvc.exp_name"] == "workspace" and run.data.tags["model"] == name
    assert run.data.tags["mlflow.source.name"] == "stages/train.py"  # no absolute machine path
    assert run.data.tags["machine.cpu"] and run.data.tags["machine.cores"] == str(machine()["cores"])  # speeds' context
    assert run.data.params[f"train.{name}.lr"] == "0.003"
    assert run.data.params["train.common.augment.crop_scale"] == "[0.5, 1.0]"
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "metrics.json", "loss.png", "dice.png", f"{name}.pt"} <= artifacts
    checkpoint = load_checkpoint(Path(client.download_artifacts(run.info.run_id, f"{name}.pt", str(download_to))))
    model = model_from_weights(name, checkpoint["model"]["params"], checkpoint["state_dict"])
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    mlflow.set_tracking_uri(uri)  # the model that leaves the pipeline is evaluate's; training logs none
    assert mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list") == []


@pytest.mark.slow
def test_default_sqlite_store_gets_params_metrics_artifacts_and_checkpoint(project, tmp_path):
    result = run_stage("train", project, "--model", "unet")
    assert result.returncode == 0, result.stderr
    assert (project / "mlflow.db").exists()
    assert_training_run_logged(f"sqlite:///{project / 'mlflow.db'}", tmp_path)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url, server
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.mark.slow
def test_real_tracking_server(project, mlflow_server, tmp_path):
    url, _ = mlflow_server
    result = run_stage("train", project, "--model", "unet", env={"MLFLOW_TRACKING_URI": url})
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower()
    assert not (project / "mlflow.db").exists()
    assert_training_run_logged(url, tmp_path)


@pytest.mark.slow
def test_unreachable_server_warns_and_training_completes(project):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_stage("train", project, "--model", "unet", env={"MLFLOW_TRACKING_URI": url})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("petseg: warning")]
    assert len(warnings) == 1 and f"MLflow tracking at {url} failed" in warnings[0]
    assert (project / "models" / "unet.pt").exists()
    assert (project / "reports" / "train" / "unet" / "metrics.json").exists()


@pytest.mark.slow
def test_server_stopping_mid_run_warns_once_and_carries_on(tmp_path, mlflow_server, monkeypatch, capsys):
    url, server = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with Tracker("petseg", "midrun", run_tags("train_unet", "unet")) as tracker:
        tracker.log_metrics({"val_dice": 0.5}, step=1)
        assert tracker.active
        server.terminate()
        server.wait(timeout=20)
        for step in (2, 3):
            tracker.log_metrics({"val_dice": 0.6}, step=step)
        tracker.log_artifacts([tmp_path])
    assert not tracker.active
    assert capsys.readouterr().err.count("petseg: warning: MLflow tracking") == 1


def test_project_root_sees_through_dvc_temp_experiment_dirs(tmp_path):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123" / "sub"
    inside.mkdir(parents=True)
    assert project_root(inside) == tmp_path / "repo"
    assert project_root(tmp_path) == tmp_path


def test_default_store_keeps_artifacts_beside_the_database_for_a_temp_experiment_and_back_dates_runs(
    tmp_path, monkeypatch
):
    # set then delete: teardown removes the variable that mlflow.set_tracking_uri() exports in this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    inside = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"  # where `dvc exp run --temp` runs a stage
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    report = inside / "report.json"
    report.write_text("{}")
    started = time.time() - 30  # the stage's work began 30 s before it logged anything
    with Tracker("petseg", "workspace-prepare", run_tags("prepare"), started=started) as tracker:
        tracker.log_artifacts([report])
    assert tracker.run_id
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("petseg")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's training-runs view
    assert [p.name for p in (tmp_path / "mlartifacts").rglob("report.json")] == ["report.json"]
    assert not (inside / "mlruns").exists() and not (tmp_path / "mlruns").exists()
    run = client.get_run(tracker.run_id)
    assert run.info.start_time == int(started * 1000) and run.info.end_time - run.info.start_time >= 30_000
    assert run.info.run_name == "workspace-prepare" and run.data.tags["stage"] == "prepare"
