"""A Phoenix refiner checkpoint for the tiny SAM (``model_type="tiny"``, seed 0), written by the real trainer,
shared by the job's and the adapters' tests."""

from __future__ import annotations

import os

from tiny_coco import make_tiny_coco

from refine_hooks.training.phoenix import TrainingConfig, TrainingData, train_refiner


def train_tiny_refiner(root: str) -> str:
    """Train 2 iterations (AMP + CMRL) on 3 generated images; returns the checkpoint's path."""
    annotations = make_tiny_coco(root, num_images=3, seed=4, prefix="refiner_train")
    out = os.path.join(root, "phoenix_tiny.pth")
    config = TrainingConfig(iterations=2, batch_size=2, warmup=1, cascade_steps=1)
    train_refiner(TrainingData(coco=[(annotations, os.path.join(root, "images"))]), out, config, model_type="tiny",
                  workers=0, progress=False, log=lambda message: None)
    return out
