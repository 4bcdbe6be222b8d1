"""Seeds, threads, device selection and mixed precision: what training and inference both set up."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from petseg.errors import PetsegError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _processes_on_this_machine() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun


def configure_threads(threads: int) -> None:
    """Intra-op threads: ``threads``, or (0) the cores shared evenly by the processes on this machine."""
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // _processes_on_this_machine()))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PetsegError("train.common.device: 'cuda' requested but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


# The widest vector extension that matters to these models' speed, first found wins (Linux /proc/cpuinfo flags).
CPU_ISAS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 bf16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def _cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields of ``path``; empty where there is none (macOS, Windows)."""
    try:
        first = path.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str | int]:
    """What a measured figure holds for, recorded beside it: the CPU's model and family (as lscpu names them), the
    cores this process may use, the widest vector extension it has (oneDNN's cap too, where one is set) and the GPU
    where CUDA has one. Speeds and even rankings differ between an AMX, an AVX-512 and an AVX2 machine."""
    info = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    found: dict[str, str | int] = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu_isa": next((name for flag, name in CPU_ISAS if flag in flags), "unknown"),
    }
    if info.get("cpu family"):  # x86's; an Arm CPU names itself otherwise
        found["cpu_family"] = info["cpu family"]
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        found["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def describe_machine(found: dict[str, str | int]) -> str:
    """One line for a log or a table: ``AMD EPYC (family 26), 2 cores, AVX-512 bf16``."""
    family = f" (family {found['cpu_family']})" if found.get("cpu_family") else ""
    parts = [f"{found['cpu']}{family}", f"{found['cores']} cores", str(found["cpu_isa"])]
    if "onednn_max_cpu_isa" in found:
        parts.append(f"oneDNN held to {found['onednn_max_cpu_isa']}")
    return ", ".join(parts + ([f"GPU {found['gpu']}"] if "gpu" in found else []))


def make_deterministic() -> None:
    """Same params -> same numbers on CPU; on GPU, deterministic kernels where PyTorch has them."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers; on CPU only as many as the cores left over by the compute threads.

    On a 2-core machine one worker process steals a core from the two math threads and slows a
    training step by ~20 %, while loading in the main process costs ~2 % (``petseg bench train``).
    """
    if device.type == "cuda":
        return requested
    spare = len(os.sched_getaffinity(0)) - torch.get_num_threads() * _processes_on_this_machine()
    return max(0, min(requested, spare))


def native_amp(amp: str | bool, device: torch.device) -> str | bool:
    """``train.common.amp``, with ``auto`` resolved: bf16 where this device has bf16 arithmetic (a CUDA GPU with
    bf16; a CPU with AMX tiles or AVX-512 bf16 dot products, as Sapphire Rapids and AMD Zen 4 on), else off (an
    AVX2-only CPU would emulate bf16, slower than fp32). docs/performance.md has the measured rates."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return "bf16" if native else False


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # resolved train.common.amp -> autocast dtype


def autocast_context(device: torch.device, amp: str | bool):
    """Mixed precision per a resolved ``train.common.amp`` (false | bf16 | fp16, see :func:`native_amp`); a no-op
    when off. An unresolved ``auto`` is a KeyError, never a silent fp16."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])
