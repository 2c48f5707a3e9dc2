"""Benchmark the pseudo-label job end to end: images/s, masks/s and where the time goes.

    python tools/benchmark.py job --model-type tiny vit_b --masks 10 100 --images 4 --image-size 480x640
    python tools/benchmark.py job --model-type tiny vit_b --masks 10 --uncertainty   # + the same job with --uncertainty

Generates a COCO dataset (JPEG noise images with ellipse masks) in a temporary directory and runs
:func:`refine_hooks.jobs.refine_annotation_file` on it with a randomly initialised SAM (cost does not
depend on the weights, so no checkpoint is needed). ``outside_model_share`` is the part of the job's
wall time not spent in the SAM image encoder or mask decoder: image and mask decoding the workers did
not hide, prompt mining, RLE encoding, shard writes and the final merge.

With ``--uncertainty`` the same data is refined a second time with the job's ``uncertainty`` option:
``uncertainty_extra_s`` is the extra wall time, ``sidecar_bytes_per_mask`` the size of the sidecar per
refined mask (8-bit levels on each mask's window, zlib), next to the size the alternative format would
have (``band_rle_bytes_per_mask``: COCO RLE of the uncertain band c <= θ) and the raw window bytes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..data.masks import rle_encode
from ..jobs import JobOptions, refine_annotation_file
from ..refiners import SAMRefiner
from ..sam import SamEngine, build_random_sam
from ..timing import StageTimer
from ..uncertainty import DEFAULT_THETA, MapFile, certainty_from_levels, uncertainty_path
from .refiner import generate_scene, peak_memory_mb

_MODEL_STAGES = ("encode", "decode")


def write_dataset(root: str, num_images: int, height: int, width: int, masks_per_image: int) -> str:
    """Write ``num_images`` JPEGs under ``root/images`` and ``root/pseudo.json``; returns the json path."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        pixels, masks = generate_scene(height, width, masks_per_image, seed=index)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(root, "images", file_name), quality=90)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for mask in masks:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                                "segmentation": rle_encode(mask), "iscrowd": 0, "score": 1.0})
    path = os.path.join(root, "pseudo.json")
    with open(path, "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}, handle)
    return path


def sidecar_sizes(path: str, theta: float = DEFAULT_THETA) -> Dict[str, Any]:
    """Bytes per mask of a sidecar, of the raw 8-bit windows it compresses, and of the alternative format
    (the COCO RLE of each map's uncertain band ``c <= θ`` on the whole image)."""
    maps = MapFile(path)
    count = max(len(maps), 1)
    raw = band = 0
    for key in maps.keys().tolist():
        levels = maps.levels(key)
        height, width = maps.image_size(key)
        raw += levels.values.size
        full = np.zeros((height, width), dtype=np.uint8)
        x1, y1, x2, y2 = levels.box
        full[y1:y2 + 1, x1:x2 + 1] = certainty_from_levels(levels.values) <= theta
        band += len(mask_utils.encode(np.asfortranarray(full))["counts"])
    return {"sidecar_bytes": os.path.getsize(path), "sidecar_bytes_per_mask": round(os.path.getsize(path) / count, 1),
            "raw_window_bytes_per_mask": round(raw / count, 1), "band_rle_bytes_per_mask": round(band / count, 1)}


def run(model_type: str, masks_per_image: int, *, num_images: int = 4, height: int = 480, width: int = 640,
        device: str = "cpu", precision: str = "fp32", workers: int = 2, iterations: int = 5,
        uncertainty: bool = False) -> Dict[str, Any]:
    """One job over a generated dataset; returns the measurements as a JSON-ready dict."""
    timer = StageTimer(cuda_sync=device.startswith("cuda"))
    engine = SamEngine(build_random_sam(model_type), device=device, precision=precision)
    refiner = SAMRefiner(engine, iterations=iterations, timer=timer)
    with tempfile.TemporaryDirectory() as root:
        # Generate the data in a child process so that the full-size masks it builds (7 GB for 300 masks
        # of a 6000x4000 image) never count in this process's peak memory, which measures the job.
        writer = multiprocessing.get_context("spawn").Process(
            target=write_dataset, args=(root, num_images, height, width, masks_per_image))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise RuntimeError(f"generating the benchmark data failed (exit code {writer.exitcode})")
        ann = os.path.join(root, "pseudo.json")
        image, masks = generate_scene(height, width, 1, seed=999)
        refiner.refine(image, masks)  # warm-up: first-call allocations and kernel selection
        timer.seconds.clear()
        options = JobOptions(model_type=model_type, device=device, precision=precision, workers=workers,
                             refiner_kwargs={"iterations": iterations}, progress=False)
        start = time.perf_counter()
        summary = refine_annotation_file(ann, os.path.join(root, "images"), os.path.join(root, "out.json"), options, refiner=refiner)
        total = time.perf_counter() - start
        model = sum(timer.seconds.get(stage, 0.0) for stage in _MODEL_STAGES)
        stages = dict(timer.seconds)  # of the plain job
        extra: Dict[str, Any] = {}
        if uncertainty:
            options.uncertainty = True
            start = time.perf_counter()
            with_maps = refine_annotation_file(ann, os.path.join(root, "images"), os.path.join(root, "out_u.json"), options,
                                               refiner=refiner)
            seconds = time.perf_counter() - start
            extra = {"uncertainty_total_s": round(seconds, 3), "uncertainty_extra_s": round(seconds - total, 3),
                     "uncertainty_extra_share": round(seconds / total - 1, 3),
                     "output_bytes_per_mask": round(os.path.getsize(os.path.join(root, "out.json")) / max(summary.records, 1), 1),
                     "mean_certainty": with_maps.mean_certainty,
                     **sidecar_sizes(uncertainty_path(os.path.join(root, "out_u.json")))}
    return {
        "model_type": model_type,
        "image_size": f"{height}x{width}",
        "images": num_images,
        "masks_per_image": masks_per_image,
        "device": device,
        "workers": workers,
        "images_per_s": round(num_images / total, 3),
        "masks_per_s": round(num_images * masks_per_image / total, 2),
        "total_s": round(total, 3),
        "in_refiner_s": round(summary.model_seconds, 3),
        "model_s": round(model, 3),
        **{f"{stage}_s": round(seconds, 3) for stage, seconds in sorted(stages.items())},
        "outside_model_share": round(1.0 - model / total, 3),
        "outside_refiner_share": round(1.0 - summary.model_seconds / total, 3),
        "records_refined": summary.refined,
        "peak_memory_mb": round(peak_memory_mb(engine.device), 1),  # this process: the refiner and the job's main loop
        **extra,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tools/benchmark.py job``."""
    from .. import cli
    from .refiner import image_size

    parser.add_argument("--model-type", nargs="+", default=["tiny", "vit_b"], type=cli.model_type)
    parser.add_argument("--masks", type=int, nargs="+", default=[10, 100], help="masks per image")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--image-size", default="480x640", type=image_size, help="HxW")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--uncertainty", action="store_true",
                        help="also run the job with --uncertainty: extra time and sidecar bytes per mask")
    parser.add_argument("--json", help="append results as JSON lines to this file")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py job", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    from .. import cli

    cli.checked_device(args.device)
    height, width = args.image_size
    for model_type in args.model_type:
        for count in args.masks:
            result = run(model_type, count, num_images=args.images, height=height, width=width, device=args.device,
                         precision=args.precision, workers=args.workers, iterations=args.iterations,
                         uncertainty=args.uncertainty)
            print(json.dumps(result), flush=True)
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
    return 0
