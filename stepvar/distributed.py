"""Ranks under torchrun: the launcher's environment read once, and the few collectives a prompt set needs.

`torchrun --nproc_per_node N stepvar generate --prompts ...` starts N copies of the command with
RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in their environment; across nodes
torchrun sets the same variables. Without them (a plain run) there is one rank and no process
group at all. torch.distributed does the communication: NCCL between GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .errors import StepvarError

# Ranks meet at a barrier only at the start and once their shard is done; a rank with a slower
# device or more prompts left may arrive hours after the others, so the wait must not time out first.
_BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """This rank's device: under torchrun on CUDA, the GPU of its local rank."""
        if self.backend == "nccl":
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        if self.backend is not None:
            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if self.backend is None:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if self.backend is None:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def close(self) -> None:
        if self.backend is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_environment(device: str = "auto") -> Ranks:
    """The ranks torchrun started (one rank when it did not), with the process group initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise StepvarError("WORLD_SIZE is set but RANK is not: start several ranks with torchrun") from None
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend, timeout=_BARRIER_TIMEOUT)
    return Ranks(rank, world, local_rank, backend)
