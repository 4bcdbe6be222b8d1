"""DistributedDataParallel under torchrun on CPU (gloo): same global batch, same result as one process."""

from __future__ import annotations

import json
import shutil

import pytest
import torch.distributed as dist
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
