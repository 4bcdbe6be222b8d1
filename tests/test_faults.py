"""Faults and bad inputs not covered beside their modules: kills, crashes mid-write, full disks, unwritable dirs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from helpers import REPO, prepare_config, run_stage, write_params

from petseg import fileio
from petseg.data import cache
from petseg.data.cache import prepare_dataset
from petseg.errors import PetsegError, Terminated, exits_cleanly
from petseg.fileio import atomic_dir, atomic_file, write_json
from petseg.models.checkpoint import load_checkpoint, save_checkpoint

NO_MLFLOW = {"PETSEG_MLFLOW": "0"}
LONGER = {"train": {"unet": {"epochs": 5, "base_channels": 16}}}


@pytest.mark.slow
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
    for name in ("metrics.json", "history.csv", "validation.csv"):
        ours = (project / "reports" / "train" / "unet" / name).read_text()
        theirs = (reference / "reports" / "train" / "unet" / name).read_text()
        if name == "history.csv":  # drop the timing columns
            ours, theirs = ([",".join(row.split(",")[:3]) for row in text.splitlines()] for text in (ours, theirs))
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
            prepare_config(image_size=512),
            workers=1,
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


def test_a_file_where_the_old_folder_goes_does_not_break_the_swap(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (tmp_path / ".prepared.old").write_text("left here by someone")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_temp_folders_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".prepared.{dead.stdout.strip()}.abc.tmp"
    stale.mkdir()
    (stale / "half.npy").write_bytes(b"x" * 10)
    mine = tmp_path / f".prepared.{os.getpid()}.xyz.tmp"  # a live run's: untouched
    mine.mkdir()
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "a").write_text("a")
    assert not stale.exists() and mine.exists()


WORKER_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from petseg.data.cache import _worker_init
pool = ProcessPoolExecutor(2, initializer=_worker_init)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
time.sleep(2)
open(sys.argv[1], "w").write(" ".join(str(pid) for pid in pool._processes))
os.kill(os.getpid(), 9)
"""


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    # No pipes: an orphaned worker would hold one open and make this wait for it.
    pids = tmp_path / "pids"
    result = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(pids)], stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == -9
    workers = [int(pid) for pid in pids.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _marked_slow_decode(job):
    """Stands in for a photo's decode in a pool worker: leaves a mark, takes a while, keeps nothing."""
    (Path(os.environ["PETSEG_TEST_MARKS"]) / job.image_path.name).touch()
    time.sleep(0.05)
    return None, "not decoded by this test"


def _stop(*args):
    raise Terminated


def test_a_stopped_prepare_drops_the_photos_still_queued(tmp_path, synthetic_tree, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("PETSEG_TEST_MARKS", str(marks))
    monkeypatch.setattr(cache, "_load_job", _marked_slow_decode)
    monkeypatch.setattr(cache, "_finish_split", _stop)  # SIGTERM lands as the first split's results are read
    with pytest.raises(Terminated):
        prepare_dataset(
            synthetic_tree / "images", synthetic_tree / "annotations", tmp_path / "out", prepare_config(), workers=1
        )
    # One worker: a chunk of 4 photos decoding and two chunks in the call queue still run; the rest are dropped.
    assert len(list(marks.iterdir())) <= 12 < len(list((synthetic_tree / "images").iterdir()))
    assert not (tmp_path / "out").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "unet.last.pt"
    save_checkpoint(path, {"epoch": 1})

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/3")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        PetsegError, match=r"unet.last.pt: could not be written: .* \(is the disk full\?\); the previous"
    ):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["unet.last.pt"]


TERMINATED_MID_RUN = """
import sys, tempfile, time
from petseg.errors import exits_cleanly

@exits_cleanly
def main():
    with tempfile.TemporaryDirectory(dir=sys.argv[1]):
        print("ready", flush=True)
        time.sleep(60)

sys.exit(main())
"""


def test_sigterm_cleans_up_and_exits_143(tmp_path):
    """`kill` or `timeout` mid-run: the temp folders a command made are removed, one line, the shell's 128 + 15."""
    work = tmp_path / "tmp"
    work.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", TERMINATED_MID_RUN, str(work)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline() == b"ready\n"
    assert len(list(work.iterdir())) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err == b"petseg: terminated\n"
    assert list(work.iterdir()) == []


def test_no_space_left_anywhere_is_one_line(capsys):
    @exits_cleanly
    def stage():
        raise OSError(errno.ENOSPC, "No space left on device", "data/raw/.images.123.tmp/images/x.jpg")

    assert stage() == 2
    assert capsys.readouterr().err == (
        "petseg: error: no space left on the device writing data/raw/.images.123.tmp/images/x.jpg; "
        "free some space and rerun\n"
    )
