"""Faults and bad inputs not covered beside their modules: kills, crashes mid-write, full disks, unwritable dirs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
from helpers import REPO, prepare_config, run_stage, write_params

from petseg import fileio
from petseg.data.cache import prepare_dataset
from petseg.errors import PetsegError
from petseg.fileio import atomic_file, write_json

NO_MLFLOW = {"PETSEG_MLFLOW": "0"}
LONGER = {"train": {"unet": {"epochs": 5, "base_channels": 16}}}


def test_sigkill_mid_training_resumes_to_identical_metrics(project, tmp_path):
    write_params(project, LONGER)
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    result = run_stage("train", reference, "--model", "unet", env=NO_MLFLOW)
    assert result.returncode == 0, result.stderr

    env = os.environ | {"PYTHONPATH": str(REPO), "PETSEG_PROGRESS": "0"} | NO_MLFLOW
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train", "--model", "unet"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = project / "models" / "unet.last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (project / "models" / "unet.pt").exists()  # a killed run leaves no result that looks final

    resumed = run_stage("train", project, "--model", "unet", env=NO_MLFLOW)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    for name in ("metrics.json", "history.csv"):
        ours = (project / "reports" / "train" / "unet" / name).read_text()
        theirs = (reference / "reports" / "train" / "unet" / name).read_text()
        if name == "history.csv":  # drop the timing columns
            ours, theirs = ([",".join(row.split(",")[:6]) for row in text.splitlines()] for text in (ours, theirs))
        assert ours == theirs


def test_crash_while_writing_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"dice": 0.9})
    with pytest.raises(RuntimeError), atomic_file(path, "w") as handle:
        handle.write('{"dice": 0.')
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "dice": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_prepare_refuses_to_start_without_disk_space(tmp_path, synthetic_tree, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(PetsegError, match=r"only 0.00 GB free, about 0.03 GB needed; free some space"):
        prepare_dataset(
            synthetic_tree / "images",
            synthetic_tree / "annotations",
            tmp_path / "out",
            prepare_config(image_size=512, workers=1),
        )
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_line_before_training(project):
    (project / "models").write_text("a file where the models directory should be")
    result = run_stage("train", project, "--model", "unet", env=NO_MLFLOW)
    assert result.returncode == 2
    assert result.stderr.startswith("petseg: error: models: cannot write there")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "reports" / "train").exists()


def test_missing_prepared_data_says_what_to_run(tmp_path):
    write_params(tmp_path, {})
    result = run_stage("train", tmp_path, "--model", "res34", env=NO_MLFLOW)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "petseg: error: data/prepared/meta.json: missing; run the prepare stage first (dvc repro prepare)"
    )
