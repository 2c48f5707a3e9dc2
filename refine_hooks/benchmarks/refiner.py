"""Benchmark SAMRefiner on one generated image: time per stage, masks/s and peak memory.

    python tools/benchmark.py refiner --model-type vit_b --image-size 480x640 --masks 50

Weights are random (cost does not depend on them), so no checkpoint is needed.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch

from ..refiners import SAMRefiner
from ..sam import SamEngine, build_random_sam
from ..timing import StageTimer


def generate_scene(height: int, width: int, num_masks: int, seed: int = 0):
    """uint8 ``H x W x 3`` noise image and ``num_masks`` bool ellipse masks of assorted sizes."""
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_masks, height, width), dtype=np.uint8)
    for mask in masks:
        axes = (int(rng.randint(5, max(6, width // 6))), int(rng.randint(5, max(6, height // 6))))
        center = (int(rng.randint(0, width)), int(rng.randint(0, height)))
        cv2.ellipse(mask, center, axes, float(rng.randint(0, 180)), 0, 360, 1, -1)
    return image, masks.astype(bool)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(model_type: str, height: int, width: int, num_masks: int, *, iterations: int = 5, device: str = "cpu",
        precision: str = "fp32", decoder_chunk_size: int = 64, repeats: int = 1) -> Dict[str, float]:
    """Refine one generated image ``repeats`` times; seconds per stage are per image (mean)."""
    timer = StageTimer(cuda_sync=device.startswith("cuda"))
    with timer("load"):
        engine = SamEngine(build_random_sam(model_type), device=device, precision=precision, decoder_chunk_size=decoder_chunk_size)
    refiner = SAMRefiner(engine, iterations=iterations, timer=timer)
    image, masks = generate_scene(height, width, num_masks)
    refiner.refine(image, masks[:1])  # warm-up: first-call allocations and kernel selection
    timer.seconds.clear()
    start = time.perf_counter()
    for _ in range(repeats):
        refiner.refine(image, masks)
    total = (time.perf_counter() - start) / repeats
    stages = {stage: seconds / repeats for stage, seconds in timer.seconds.items()}
    outside_encoder = total - stages.get("encode", 0.0)
    return {
        "model_type": model_type,
        "image_size": f"{height}x{width}",
        "masks": num_masks,
        "iterations": iterations,
        "device": device,
        "precision": precision,
        **{f"{stage}_s": round(value, 4) for stage, value in sorted(stages.items())},
        "total_s": round(total, 4),
        "outside_encoder_s": round(outside_encoder, 4),
        "masks_per_s": round(num_masks / total, 2),
        "peak_memory_mb": round(peak_memory_mb(torch.device(device)), 1),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py refiner", description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--image-size", default="480x640", help="HxW")
    parser.add_argument("--masks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--decoder-chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="append results as JSON lines to this file")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    for count in args.masks:
        result = run(args.model_type, height, width, count, iterations=args.iterations, device=args.device,
                     precision=args.precision, decoder_chunk_size=args.decoder_chunk_size, repeats=args.repeats)
        print(json.dumps(result))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0
