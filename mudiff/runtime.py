"""Device, precision and process-group helpers shared by training, sampling and benchmarks."""
from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass

import torch
import torch.distributed as dist


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the CUDA device of this process if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device; use device='auto'")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a CUDA device that supports it (``auto``), or when asked; None means float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def memory_format(channels_last: bool | None, device: torch.device) -> torch.memory_format:
    """channels_last when asked, or (``None``, auto) on a CPU, where oneDNN convolutions run about 2x faster on
    it; contiguous on CUDA, where GroupNorm has no channels-last kernel and every norm would convert twice."""
    if channels_last is None:
        channels_last = device.type == "cpu"
    return torch.channels_last if channels_last else torch.contiguous_format


def use_compile(compile: bool | None, device: torch.device) -> bool:
    """torch.compile when asked, or (``None``, auto) on CUDA, where fusing the many small norm, activation and
    modulation kernels pays for the compile time; not on a CPU (minutes of compiling for a short CPU run)."""
    return device.type == "cuda" if compile is None else compile


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 tensor cores for float32 matrix products and convolutions, cuDNN's autotuner (the shapes of
    a run do not change)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for mixed precision, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the peak resident set size of the process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux


@dataclass
class ProcessGroup:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 when launched plainly)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_process_group(device: torch.device) -> ProcessGroup:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return ProcessGroup()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size())
