"""Data-parallel set-up and teardown in one place: `torchrun --nproc_per_node N -m stages.<stage>` runs N
processes of a training stage (NCCL on CUDA, gloo on CPU); a plain run is world size 1 and touches nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """Yield (rank, world size). Under torchrun, join the process group and leave it on the way out, on
    success (after every rank has arrived) and on failure alike."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), world
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """This process's GPU under torchrun (LOCAL_RANK); the device unchanged otherwise."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
