"""Benchmark refiner training: iterations/s, AMP updates per mask and ms per update, peak memory, with and
without the embedding cache.

    python tools/benchmark.py train --model-type tiny vit_b --cache off on

Weights are random (cost does not depend on them). A random decoder's mask hardly overlaps its target,
so with Phoenix's band U(0.3, 0.9) AMP would stop before its first update; the benchmark sets the band to
[0, 0], which no mask falls below, so every mask takes all N - 1 updates and ms per update is measured.
How many updates a mask needs with real weights (the paper: 4.6 on average) cannot be measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from ..data.masks import mask_to_xywh, rle_encode
from ..sam import build_random_sam
from ..timing import StageTimer
from ..training.phoenix import AMPConfig, CocoSource, RefinerTrainer, TrainingConfig
from ..training.phoenix.trainer import HookBase
from .refiner import generate_scene, peak_memory_mb


def write_dataset(root: str, images: int, height: int, width: int, masks_per_image: int = 3) -> str:
    """Generated images with ellipse masks as a COCO file under ``root``; returns its path."""
    entries, annotations = [], []
    for i in range(images):
        image, masks = generate_scene(height, width, masks_per_image, seed=i)
        name = f"{i:04d}.png"
        Image.fromarray(image).save(os.path.join(root, name))
        entries.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for mask in masks:
            if mask.sum() >= 64:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "segmentation": rle_encode(mask), "bbox": mask_to_xywh(mask), "area": float(mask.sum())})
    path = os.path.join(root, "train.json")
    with open(path, "w") as handle:
        json.dump({"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}, handle)
    return path


class _IterationTimes(HookBase):
    def __init__(self):
        self.seconds: List[float] = []
        self.updates = 0.0
        self.amp_masks = 0.0

    def after_step(self, iteration, stats):
        self.seconds.append(stats["seconds"])
        self.updates += stats.get("amp_updates", 0.0)
        self.amp_masks += stats.get("amp_masks", 0.0)


def run(model_type: str, *, cache: bool, height: int, width: int, images: int, iterations: int, batch_size: int,
        device: str, precision: str, contrastive: bool = True) -> Dict[str, object]:
    """Train ``iterations`` steps on generated data; times per stage are means per iteration."""
    with tempfile.TemporaryDirectory() as root:
        source = CocoSource(write_dataset(root, images, height, width), root)
        source.check(False)
        config = TrainingConfig(iterations=iterations, batch_size=batch_size, warmup=1, precision=precision,
                                colour_jitter=0.0, amp=AMPConfig(tau_range=(0.0, 0.0), band=0.0))
        config.cmrl.enabled = contrastive
        timer = StageTimer(cuda_sync=device.startswith("cuda"))
        times = _IterationTimes()
        trainer = RefinerTrainer(build_random_sam(model_type), [source], config, work_dir=os.path.join(root, "work"),
                                 device=device, cache_dir=os.path.join(root, "cache") if cache else None, workers=0,
                                 hooks=[times], timer=timer)
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    epoch = max(1, -(-len(trainer.refs) // batch_size))  # iterations until every target was seen once
    later = times.seconds[epoch:]  # empty when the run is not longer than one epoch: reported as null
    return {
        "model_type": model_type,
        "image_size": f"{height}x{width}",
        "cache": cache,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "iterations": iterations,
        "s_per_iteration": round(total / iterations, 3),
        "s_per_iteration_after_first_epoch": round(float(np.mean(later)), 3) if later else None,
        "iterations_per_s": round(iterations / total, 3),
        **{f"{stage}_s_per_iteration": round(seconds / iterations, 4) for stage, seconds in sorted(timer.seconds.items())},
        "amp_updates_per_mask": round(times.updates / max(times.amp_masks, 1), 2),
        "amp_ms_per_update": round(1000 * timer.seconds.get("noise", 0.0) / max(times.updates, 1), 2),
        "cache_hits": trainer.cache.hits if trainer.cache else 0,
        "peak_memory_mb": round(peak_memory_mb(torch.device(device)), 1),
        "torch_threads": torch.get_num_threads(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tools/benchmark.py train``."""
    from .. import cli
    from .refiner import image_size

    parser.add_argument("--model-type", nargs="+", default=["tiny"], type=cli.model_type)
    parser.add_argument("--cache", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--image-size", default="480x640", type=image_size, help="HxW")
    parser.add_argument("--images", type=cli.positive_int, default=4)
    parser.add_argument("--iterations", type=cli.positive_int, default=6)
    parser.add_argument("--batch-size", type=cli.positive_int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--no-contrastive", action="store_true")
    parser.add_argument("--json", help="append results as JSON lines to this file")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    from .. import cli

    cli.checked_device(args.device)
    height, width = args.image_size
    for model_type in args.model_type:
        for cache in args.cache:
            result = run(model_type, cache=cache == "on", height=height, width=width, images=args.images,
                         iterations=args.iterations, batch_size=args.batch_size, device=args.device,
                         precision=args.precision, contrastive=not args.no_contrastive)
            print(json.dumps(result))
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
    return 0
