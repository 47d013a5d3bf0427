"""Process-group setup from torchrun's environment, as one function returning a small value object.

``setup_distributed()`` reads ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (set by ``torchrun`` or
``d2v train --nproc N``), initialises the process group (NCCL on CUDA, gloo on CPU) and returns a
``DistInfo``. Without those variables it returns a single-process ``DistInfo`` and initialises nothing.
Call ``teardown_distributed()`` in a ``finally``. Nothing here is global state beyond torch's own group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from d2v.core.errors import ConfigError

            raise ConfigError("run.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def teardown_distributed(*, synchronize: bool = True) -> None:
    """Destroy the process group. After a normal finish every rank meets at a barrier first: a rank that tears
    down its gloo connections while a peer is still in its last collective makes that peer abort (SIGABRT,
    "terminate called without an active exception"). After an error there is no barrier (peers may be gone)."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (on the process group's device: NCCL needs CUDA tensors); identity in a single process.
    The result is on the input's device."""
    if info.distributed:
        work = tensor.to(info.device, copy=True)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        tensor = work.to(tensor.device)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
