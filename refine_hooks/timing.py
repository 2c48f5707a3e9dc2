"""Wall-clock time per named stage, for the benchmark tool; synchronises CUDA so GPU work is counted."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator

import torch


class StageTimer:
    """Accumulates seconds per stage: ``with timer("decode"): ...``."""

    def __init__(self, cuda_sync: bool = False):
        self.seconds: Dict[str, float] = defaultdict(float)
        self.cuda_sync = cuda_sync and torch.cuda.is_available()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.cuda_sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda_sync:
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - start


class NullTimer:
    """A timer that measures nothing (the default: no synchronisation cost)."""

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        yield
