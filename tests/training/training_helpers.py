"""Shared by the training tests."""

import os

from refine_hooks.training.phoenix import TrainingConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick_config(**overrides) -> TrainingConfig:
    """Settings for seconds-long CPU runs: few iterations, small batch, no warm-up."""
    values = dict(iterations=3, batch_size=2, warmup=1, cascade_steps=1)
    values.update(overrides)
    return TrainingConfig(**values)
