"""Benchmark: Boundary AP vs mask AP on a generated COCO-style dataset, and the generator the evaluation
tests use.

``python tools/benchmark.py evaluation --images 5000 --dets 100 --workers 2`` (or
``python -m refine_hooks.benchmarks.evaluation ...``) generates the data in memory, then times
``evaluate_coco(iou_types=["segm"])`` and ``evaluate_coco(iou_types=["boundary"])`` end to end on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from refine_hooks.evaluation.boundary import compute_boundaries, crop_to_counts


def _ellipse_rle(cx: float, cy: float, rx: float, ry: float, angle: float, height: int, width: int
                 ) -> Dict[str, Any]:
    """Compressed RLE (str counts) of a filled ellipse clipped to the image, drawn in its own box."""
    rx, ry = max(1, int(round(rx))), max(1, int(round(ry)))
    r = max(rx, ry)
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    canvas = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.uint8)
    cv2.ellipse(canvas, (r, r), (rx, ry), angle, 0, 360, 1, -1)
    cx0, cy0 = max(0, -x0), max(0, -y0)
    cx1, cy1 = min(canvas.shape[1], width - x0), min(canvas.shape[0], height - y0)
    if cx1 <= cx0 or cy1 <= cy0:
        crop, x0, y0 = np.zeros((1, 1), dtype=bool), 0, 0
    else:
        crop = canvas[cy0:cy1, cx0:cx1].astype(bool)
        x0, y0 = x0 + cx0, y0 + cy0
    counts = crop_to_counts(crop, x0, y0, height, width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.astype(np.uint32)}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _ellipse_polygon(cx, cy, rx, ry, angle, height, width) -> List[float]:
    pts = cv2.ellipse2Poly((int(round(cx)), int(round(cy))), (max(1, int(round(rx))), max(1, int(round(ry)))),
                           int(round(angle)), 0, 360, 15).astype(np.float64)
    pts[:, 0] = np.clip(pts[:, 0], 0, width - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, height - 1)
    return pts.reshape(-1).tolist()


def make_synthetic_coco(
    n_images: int = 20,
    dets_per_image: int = 30,
    *,
    height: int = 120,
    width: int = 160,
    n_categories: int = 8,
    max_gt: int = 8,
    empty_fraction: float = 0.15,
    crowd_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A COCO annotation dict and a COCO result list with known structure:

    - ``n_images`` images of ``height x width``, about ``empty_fraction`` of them without any annotation;
    - up to ``max_gt`` objects per image (polygon ellipses, sizes spanning COCO's small/medium/large,
      some cut by the image border), and in about ``crowd_fraction`` of the images one crowd region (RLE);
    - ``dets_per_image`` detections per image: 1-3 perturbed copies of each object (shifted, rescaled,
      rotated; sometimes the wrong category) and false positives elsewhere (random category);
    - category ids are not contiguous (like COCO's).
    """
    rng = np.random.default_rng(seed)
    cat_ids = [k + 1 + k // 3 for k in range(n_categories)]
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    images, annotations, results = [], [], []
    diag = math.hypot(height, width)
    ann_id = 1
    for image_id in tqdm(range(1, n_images + 1), disable=not progress, desc="generate", unit="img"):
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.jpg"})
        objects = []
        if rng.random() >= empty_fraction:
            for _ in range(int(rng.integers(1, max_gt + 1))):
                r = diag * float(np.exp(rng.uniform(np.log(0.01), np.log(0.3))))
                obj = (float(rng.uniform(0, width)), float(rng.uniform(0, height)), r,
                       r * float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, 180)), int(rng.choice(cat_ids)))
                poly = _ellipse_polygon(*obj[:5], height, width)
                rle = mask_utils.frPyObjects([poly], height, width)
                area = float(mask_utils.area(rle)[0])
                if area < 1:
                    continue
                objects.append(obj)
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": obj[5],
                                    "segmentation": [poly], "area": area,
                                    "bbox": [float(v) for v in mask_utils.toBbox(rle)[0]], "iscrowd": 0})
                ann_id += 1
            if rng.random() < crowd_fraction:
                r = diag * float(rng.uniform(0.1, 0.3))
                crowd = _ellipse_rle(float(rng.uniform(0, width)), float(rng.uniform(0, height)), r, r * 0.6,
                                     float(rng.uniform(0, 180)), height, width)
                area = float(mask_utils.area({"size": crowd["size"], "counts": crowd["counts"].encode()}))
                if area >= 1:
                    annotations.append({"id": ann_id, "image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                                        "segmentation": crowd, "area": area, "iscrowd": 1,
                                        "bbox": [float(v) for v in mask_utils.toBbox(
                                            {"size": crowd["size"], "counts": crowd["counts"].encode()})]})
                    ann_id += 1
        dets = []
        for cx, cy, rx, ry, angle, cat in objects:
            for _ in range(int(rng.integers(1, 4))):
                if len(dets) >= dets_per_image:
                    break
                s = float(rng.normal(1.0, 0.12))
                shift = 0.15 * ry
                det_cat = cat if rng.random() > 0.1 else int(rng.choice(cat_ids))
                dets.append((cx + rng.normal(0, shift), cy + rng.normal(0, shift), rx * s,
                             ry * float(rng.normal(1.0, 0.12)), angle + rng.normal(0, 10), det_cat,
                             float(rng.uniform(0.3, 1.0))))
        while len(dets) < dets_per_image:
            r = diag * float(np.exp(rng.uniform(np.log(0.01), np.log(0.2))))
            dets.append((float(rng.uniform(0, width)), float(rng.uniform(0, height)), r, r * float(rng.uniform(0.4, 1)),
                         float(rng.uniform(0, 180)), int(rng.choice(cat_ids)), float(rng.uniform(0.0, 0.7))))
        for cx, cy, rx, ry, angle, cat, score in dets:
            results.append({"image_id": image_id, "category_id": cat, "score": round(score, 4),
                            "segmentation": _ellipse_rle(cx, cy, abs(rx), abs(ry), angle, height, width)})
    gt = {"info": {"description": "refine-hooks synthetic evaluation data"}, "images": images,
          "annotations": annotations, "categories": categories}
    return gt, results


def run_benchmark(n_images: int, dets_per_image: int, height: int, width: int, workers: int,
                  seed: int = 0, exhaustive: bool = False, throughput_sample: int = 20000) -> Dict[str, Any]:
    """Generate the data, then time segm-only and boundary-only evaluation end to end (seconds), and the
    boundary rate (masks per second over ``workers`` processes) on ``throughput_sample`` detections."""
    from refine_hooks.evaluation import evaluate_coco

    start = time.perf_counter()
    gt, results = make_synthetic_coco(n_images, dets_per_image, height=height, width=width, n_categories=80,
                                      max_gt=15, seed=seed, progress=True)
    generate_s = time.perf_counter() - start
    timings, metrics, notes = {}, {}, []
    for iou_type in ("segm", "boundary"):
        gt_copy, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
        start = time.perf_counter()
        out = evaluate_coco(gt_copy, results_copy, iou_types=[iou_type], workers=workers, progress=True,
                            exhaustive=exhaustive)
        timings[iou_type] = time.perf_counter() - start
        metrics.update(out)
        notes += [n for n in out.notes if n.startswith("boundary:")]
        print(out.format(), flush=True)
    # Worst case for the boundary step: every detection needing its band. Measure the rate on a sample.
    sample = [r["segmentation"] for r in results[:throughput_sample]]
    start = time.perf_counter()
    compute_boundaries(sample, workers=workers, progress=True, desc="throughput sample")
    rate = len(sample) / max(time.perf_counter() - start, 1e-9)
    return {
        "boundary_masks_per_s": round(rate, 1),
        "all_detections_boundary_s_estimate": round(len(results) / rate, 1),
        "images": n_images, "detections_per_image": dets_per_image, "image_size": [height, width],
        "detections": len(results), "ground_truth": len(gt["annotations"]), "workers": workers,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "generate_s": round(generate_s, 2), "segm_s": round(timings["segm"], 2),
        "boundary_s": round(timings["boundary"], 2), "ratio": round(timings["boundary"] / timings["segm"], 3),
        "exhaustive": exhaustive, "boundary_note": notes,
        "metrics": metrics,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tools/benchmark.py evaluation``."""
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exhaustive", action="store_true",
                        help="boundaries for every overlapping pair, not only pairs that can match (worst case)")
    parser.add_argument("--out", help="write the figures as JSON here")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py evaluation", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    report = run_benchmark(args.images, args.dets, args.height, args.width, args.workers, args.seed,
                           args.exhaustive)
    summary = {k: v for k, v in report.items() if k != "metrics"}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    limit = 2.0
    if report["ratio"] > limit:
        print(f"boundary AP took {report['ratio']:.2f}x the time of segm AP (target <= {limit}x)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
