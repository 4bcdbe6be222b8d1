"""DistributedDataParallel under torchrun on CPU (gloo): same global batch, same result as one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import run_stage, write_params

from petseg.training.distributed import Context, init_from_env

NO_MLFLOW = {"PETSEG_MLFLOW": "0"}
DETERMINISTIC_BATCHES = {"augment": {"enabled": False}}


def train_with(project, nproc: int) -> dict:
    write_params(project, {"train": {"common": DETERMINISTIC_BATCHES | {"nproc": nproc}}})
    result = run_stage("train", project, "--model", "unet", env=NO_MLFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("train_unet: epoch 2/2") == 1  # only rank 0 reports
    return json.loads((project / "reports" / "train" / "unet" / "metrics.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(project, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(project, single)
    one = train_with(single, 1)
    two = train_with(project, 2)
    assert one["best_epoch"] == two["best_epoch"]
    for key in ("train_loss", "val_loss", "val_dice", "val_iou"):
        assert two[key] == pytest.approx(one[key], abs=2e-3), key
    # Resume under torchrun: every rank loads the finished run's state; rank 0 rewrites the model.
    (project / "models" / "unet.pt").unlink()
    result = run_stage("train", project, "--model", "unet", env=NO_MLFLOW)
    assert result.returncode == 0 and "resuming after epoch 2" in result.stdout
    assert (project / "models" / "unet.pt").exists()


def test_batch_must_split_evenly(project):
    write_params(project, {"train": {"common": {"nproc": 3}, "unet": {"batch_size": 8}}})
    result = run_stage("train", project, "--model", "unet", env=NO_MLFLOW)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "petseg: error: params.yaml: train.unet.batch_size: must be a multiple of train.common.nproc (3): "
        "each process takes an equal share (got 8)"
    )


@pytest.mark.parametrize(("device_type", "backend"), [("cpu", "gloo"), ("cuda", "cpu:gloo,cuda:nccl")])
def test_process_group_can_carry_the_cpu_collectives(monkeypatch, device_type, backend):
    # Context.sum/all_true/gather reduce CPU tensors: a NCCL-only group would fail on a GPU run's first step.
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert init_from_env(device_type) == Context(rank=1, world_size=2, local_rank=1)
    assert chosen == [backend]
    dist.Backend(backend)  # a form this torch accepts


def _agree(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    context = Context(rank=rank, world_size=2)
    (seconds,) = context.max([3.5, 2.25][rank])  # each process timed its epoch on its own clock
    (Path(out_dir) / f"rank{rank}").write_text(repr(seconds))
    dist.destroy_process_group()


def test_every_process_counts_the_slowest_ones_time(tmp_path):
    # The time budget, the schedule's progress, the resizing switch and the augmentation strength all read the
    # elapsed time: the processes must agree on it, or their replicas would train differently.
    mp.spawn(_agree, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["3.5", "3.5"]
    assert Context().max(2.25, 1.0) == [2.25, 1.0]  # one process: its own
