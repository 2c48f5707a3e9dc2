"""Ranks for a job launched by torchrun (or any launcher that sets ``RANK`` / ``WORLD_SIZE``), or called
from inside a distributed run (a training hook).

Ranks only need to agree on two things: whether any rank found bad input before the work starts, and
when every rank has finished so rank 0 can merge. Both go through a gloo group, on CPU, whatever
backend the caller (e.g. a training loop running on NCCL) uses for its own work.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Optional

import torch
import torch.distributed as dist

# Ranks wait for each other at the end of the work; a static split can leave one rank hours behind.
_BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclasses.dataclass
class Ranks:
    """This process's place among the job's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Optional[Any] = None
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def init_ranks() -> Ranks:
    """Join the caller's process group, or the launcher's (creating a gloo one when there is none).

    An initialised process group with more than one process wins over the environment: Detectron2's
    ``launch`` (``mp.start_processes`` + ``init_process_group(init_method=tcp://...)``) sets no
    ``WORLD_SIZE``, and a hook calling the job from inside such a run must still split the work instead of
    having every rank do all of it into the same files.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if "LOCAL_RANK" in os.environ:
            local_rank = int(os.environ["LOCAL_RANK"])
        else:  # Detectron2's launch sets the device of each local process
            local_rank = torch.cuda.current_device() if torch.cuda.is_available() else 0
        group = dist.new_group(backend="gloo", timeout=_BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, group, owns_process_group=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group(backend="gloo", timeout=_BARRIER_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, None, owns_process_group=True)
