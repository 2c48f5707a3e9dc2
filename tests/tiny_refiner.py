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


def with_task_prompt(checkpoint: str, out: str, *, scale: float = 2.0, seed: int = 0) -> str:
    """``checkpoint`` plus a random task prompt (SUM's three tasks, default ``entity``): what a trainer run on
    mixed tasks writes, with embeddings large enough to change a tiny SAM's masks."""
    import torch

    from refine_hooks.sam.refiner_weights import TASKS, read_refiner_checkpoint, save_refiner_checkpoint

    state = read_refiner_checkpoint(checkpoint)
    channels = next(v for k, v in state["weights"].items() if k == "prompt_encoder.no_mask_embed.weight").shape[1]
    embedding = torch.randn((len(TASKS), channels), generator=torch.Generator().manual_seed(seed)) * scale
    save_refiner_checkpoint(out, weights=state["weights"], fingerprint=state["sam_fingerprint"], kind=state["kind"],
                            mask_prompt=state["mask_prompt"], prompts=state["prompts"], training=state["training"],
                            sam=state["sam"], task_prompt={"embedding": embedding, "tasks": TASKS, "default": "entity"})
    return out
