"""Ranks for a job launched by torchrun (or any launcher that sets ``RANK`` / ``WORLD_SIZE``).

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
    """Join the launcher's process group (creating a gloo one when there is none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        group = dist.new_group(backend="gloo", timeout=_BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, group, owns_process_group=False)
    dist.init_process_group(backend="gloo", timeout=_BARRIER_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, None, owns_process_group=True)
