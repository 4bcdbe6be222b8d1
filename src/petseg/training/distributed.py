"""Multi-process training (torchrun / DistributedDataParallel): rank bookkeeping and collectives.

With one process every helper is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from petseg.config import TrainCommonConfig
from petseg.errors import PetsegError
from petseg.runtime import resolve_device

# NCCL carries CUDA tensors only. DDP's gradients go through it; the small collectives below (loss sums, the stop
# vote, gathered confusion counts) are CPU tensors, which on a GPU run travel through gloo beside it.
BACKENDS = {"cuda": "cpu:gloo,cuda:nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over all processes (float64, so counts stay exact)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, *values: float) -> list[float]:
        """Each number's largest value over all processes: the slowest one's time is the one every process counts."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: tuple[float, ...], op: dist.ReduceOp) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.active:
            dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        return self.sum(0.0 if flag else 1.0)[0] == 0.0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a CPU tensor's rows from every process, in rank order."""
        if not self.active:
            return tensor
        parts: list[torch.Tensor | None] = [None] * self.world_size
        dist.all_gather_object(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env(device_type: str) -> Context:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS.get(device_type, "gloo"))
    return Context(rank=dist.get_rank(), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(context: Context) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(batch_size: int, context: Context, key: str) -> int:
    if batch_size % context.world_size:
        raise PetsegError(f"{key}: {batch_size} does not split evenly over {context.world_size} processes")
    return batch_size // context.world_size


def training_device(name: str, context: Context) -> torch.device:
    """``train.common.device`` resolved; under torchrun on GPUs, this process's own GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and context.active:
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


def place_model(model: nn.Module, device: torch.device, context: Context, common: TrainCommonConfig):
    """(the model on ``device``, what training calls: wrapped in DDP across processes, compiled if asked)."""
    model = model.to(device)
    if common.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_devices = [device] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=ddp_devices) if context.active else model
    return model, torch.compile(wrapped) if common.compile else wrapped
