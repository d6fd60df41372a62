"""Where and how torch runs: the device, the precision, the process's rank under torchrun.

extract, finetune and prediction all set up through these, so they choose the same way.
"""

from __future__ import annotations

import contextlib
import os

import torch

from . import distributed
from . import accelerators
from .console import silent
from .errors import FeatxError
from .options import check_device


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit device must exist."""
    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatxError(f"--device {device} asked for, but PyTorch sees no CUDA GPU")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise FeatxError(f"--device {device} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise FeatxError("--device mps asked for, but this PyTorch build has no MPS")
    return torch.device(device)


def default_batch_size(device: torch.device) -> int:
    """On CPUs small batches are faster (activations stay in cache): lite0 41 img/s at 16, 33 at 32."""
    return 64 if device.type == "cuda" else 16


def default_workers(device: torch.device) -> int:
    """Decoding processes: on a CPU they compete with the model for cores, so keep them few."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 1 if cores >= 2 else 0
    return min(8, max(1, cores - 1))


def precision_for(device: torch.device) -> str:
    """AMP on CUDA (bf16 where supported), fp32 elsewhere: "amp-bf16", "amp-fp16" or "fp32".
    Recorded in every feature cache."""
    if device.type == "cuda":
        return "amp-bf16" if torch.cuda.is_bf16_supported() else "amp-fp16"
    return "fp32"


def training_precision(device: torch.device, asked: str = "auto") -> str:
    """What a fine-tune trains at (fp32, amp-bf16 or amp-fp16) when `asked` auto, fp32 or bf16; bf16 on a CPU
    only where it computes in bfloat16 natively (emulated, it would be slower than float32)."""
    if asked == "auto":
        return precision_for(device)
    if asked == "bf16" and device.type == "cpu":
        accelerators.require_cpu_bf16()
    if asked == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FeatxError("--precision bf16: this GPU has no bfloat16; use auto (float16 autocast) or fp32")
    return "amp-bf16" if asked == "bf16" else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (a no-op for fp32)."""
    if not precision.startswith("amp"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "amp-bf16" else torch.float16)


def join_ranks(device: str, *, gpu_backend: str = "gloo") -> tuple[int, int, str]:
    """(rank, world size, device) of this process; under torchrun it joins the process group and
    takes its own GPU (cuda:LOCAL_RANK). `gpu_backend`: nccl for DDP's gradients, gloo for
    extraction's barriers and object gathers. Outside torchrun: (0, 1, device) unchanged."""
    rank, size, local_rank = distributed.world()
    if size > 1:
        if device in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        distributed.init(gpu_backend if device.startswith("cuda") else "gloo")
    return rank, size, device


def speaking(rank: int, log, progress: bool):
    """(log, progress) for this rank: under torchrun, rank 0 speaks for all."""
    return (log, progress) if rank == 0 else (silent, False)
