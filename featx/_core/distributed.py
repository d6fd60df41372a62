"""torch.distributed under torchrun, reduced to what featx needs: who am I, wait, sum, gather.

Outside torchrun (WORLD_SIZE unset or 1) every function is a cheap no-op, so the single-process
code path is the distributed one with one rank.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0"))


def init(backend: str = "gloo") -> None:
    """Join torchrun's process group: gloo on CPU (and for extraction's barriers), nccl for DDP on GPUs."""
    import torch.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group(backend)


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if _active():
        dist.barrier()


def all_sum(values, device=None) -> list[float]:
    """Element-wise sums over ranks of a few float64 numbers (one collective call)."""
    import torch
    import torch.distributed as dist

    if not _active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
