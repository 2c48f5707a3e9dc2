"""Does the uncertainty map point at the wrong pixels? Measured on generated data with known errors.

    python tools/benchmark.py uncertainty --images 20 --json results.jsonl

SUM (NeurIPS 2024, App. D.3) reports that pixels with certainty c > 0.6 of a pseudo-label were right 98%
of the time on HRSOD, the others 28.5%. This suite makes coarse masks whose wrong pixels are known
(ground-truth objects with a false-positive blob attached, a bite taken out and the boundary moved by a
pixel or two), runs the pseudo-label job with ``--uncertainty`` and counts, inside each object's
neighbourhood (the sidecar window united with the ground-truth box), how many certain and how many
uncertain pixels are wrong, for the coarse label and for the refined one.

Refiners: SAMRefiner on a tiny SAM with random weights (no trained weights are available here), and two
stand-ins that bracket what a refiner can do to the map: ``oracle`` returns the ground truth (σ(r) = the
signed-distance sigmoid of the true mask), ``identity`` returns the coarse mask unchanged; between them,
``shifted`` returns the ground truth with its boundary one pixel off. Random weights
show that the pipeline runs and what noise does; they cannot show that SAMRefiner's map finds errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..data.masks import rle_encode, segmentation_to_mask
from ..data.windows import WindowedMap, mask_box, union_box
from ..jobs import JobOptions, refine_annotation_file
from .jobs import sidecar_sizes
from ..refiners import Refiner, RefineResult, SAMRefiner
from ..sam import SamEngine, build_tiny_sam
from ..uncertainty import DEFAULT_THETA, MapFile, binary_mask_probability, certainty_from_levels, uncertainty_path


def _object(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    center = (int(rng.randint(width // 5, 4 * width // 5)), int(rng.randint(height // 5, 4 * height // 5)))
    axes = (int(rng.randint(width // 12, width // 6)), int(rng.randint(height // 12, height // 6)))
    cv2.ellipse(mask, center, axes, float(rng.randint(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def corrupt(truth: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A coarse version of a bool mask with known wrong regions: the boundary moved in or out by 1-2 px,
    a false-positive blob attached at one boundary point, a bite removed at another."""
    shift = int(rng.choice([-2, -1, 1, 2]))
    kernel = np.ones((2 * abs(shift) + 1,) * 2, np.uint8)
    coarse = (cv2.dilate if shift > 0 else cv2.erode)(truth.astype(np.uint8), kernel).astype(bool)
    edge = np.argwhere(truth & ~cv2.erode(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    size = max(3, int(np.sqrt(truth.sum()) / 3))
    for value in (True, False):
        y, x = edge[rng.randint(len(edge))]
        blob = np.zeros(truth.shape, np.uint8)
        cv2.circle(blob, (int(x), int(y)), size, 1, -1)
        coarse = coarse | blob.astype(bool) if value else coarse & ~blob.astype(bool)
    return coarse


def write_dataset(root: str, num_images: int, height: int, width: int, objects: int, seed: int = 0) -> Dict[str, Any]:
    """PNG images of coloured objects on a textured background, a coarse COCO file ``coarse.json`` and
    the ground truth (returned: image id -> list of (annotation id, true mask))."""
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations, truth = [], [], {}
    for index in range(num_images):
        pixels = rng.randint(60, 110, size=(height, width, 3)).astype(np.uint8)
        image_id = index + 1
        truth[image_id] = []
        for _ in range(objects):
            mask = _object(rng, height, width)
            pixels[mask] = rng.randint(0, 256, size=3)
            coarse = corrupt(mask, rng)
            annotation_id = len(annotations) + 1
            annotations.append({"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": rle_encode(coarse), "area": int(coarse.sum()), "bbox": [0, 0, 1, 1]})
            truth[image_id].append((annotation_id, mask))
        # later objects cover earlier ones: the truth is what stays visible
        for k, (annotation_id, mask) in enumerate(truth[image_id]):
            for _, later in truth[image_id][k + 1:]:
                mask = mask & ~later
            truth[image_id][k] = (annotation_id, mask)
        file_name = f"{index:05d}.png"
        Image.fromarray(pixels).save(os.path.join(root, "images", file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    with open(os.path.join(root, "coarse.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}, f)
    return {"truth": truth, "images": images}


def _key(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()


class LookupRefiner(Refiner):
    """A stand-in refiner that knows the true mask behind every coarse mask (found by the coarse mask's bits).

    ``mode="oracle"`` returns the true mask, ``mode="shifted"`` the true mask with its boundary moved one
    pixel out (odd annotation ids) or in (even ones), ``mode="identity"`` the coarse mask; σ(r) is the
    signed-distance sigmoid of what it returns.
    """

    def __init__(self, truth_by_coarse: Dict[str, np.ndarray], mode: str):
        self.truth_by_coarse = truth_by_coarse
        self.mode = mode

    def refine_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *, probabilities: bool = False) -> List[RefineResult]:
        results = []
        for coarse in masks:
            refined = coarse.copy()
            if self.mode in ("oracle", "shifted"):
                for i, mask in enumerate(coarse):
                    refined[i] = self.truth_by_coarse[_key(mask)]
                    if self.mode == "shifted":
                        move = cv2.dilate if i % 2 else cv2.erode
                        refined[i] = move(refined[i].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            soft: Optional[List[Optional[WindowedMap]]] = None
            if probabilities:
                soft = []
                for before, after in zip(coarse, refined):
                    box = union_box(mask_box(before), mask_box(after))
                    soft.append(WindowedMap(binary_mask_probability(after, box), box[0], box[1]))
            results.append(RefineResult(refined, np.ones(len(coarse), np.float32), {}, soft))
        return results


def measure(root: str, data: Dict[str, Any], output: str, theta: float) -> Dict[str, Any]:
    """Wrong-pixel counts among certain / uncertain pixels of every refined record's neighbourhood."""
    with open(output) as f:
        refined = {a["id"]: a for a in json.load(f)["annotations"]}
    with open(os.path.join(root, "coarse.json")) as f:
        coarse = {a["id"]: a for a in json.load(f)["annotations"]}
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    maps = MapFile(uncertainty_path(output))
    counts = {key: 0 for key in ("certain", "uncertain", "coarse_wrong_certain", "coarse_wrong_uncertain",
                                 "refined_wrong_certain", "refined_wrong_uncertain")}
    for image_id, objects in data["truth"].items():
        height, width = sizes[image_id]
        for annotation_id, truth in objects:
            if annotation_id not in maps:
                continue
            levels = maps.levels(annotation_id)
            certainty = np.ones((height, width), np.float32)
            x1, y1, x2, y2 = levels.box
            certainty[y1:y2 + 1, x1:x2 + 1] = certainty_from_levels(levels.values)
            bx1, by1, bx2, by2 = union_box(levels.box, mask_box(truth))
            region = (slice(by1, by2 + 1), slice(bx1, bx2 + 1))
            sure = certainty[region] > theta
            before = segmentation_to_mask(coarse[annotation_id]["segmentation"], height, width)[region] != truth[region]
            after = segmentation_to_mask(refined[annotation_id]["segmentation"], height, width)[region] != truth[region]
            counts["certain"] += int(sure.sum())
            counts["uncertain"] += int((~sure).sum())
            counts["coarse_wrong_certain"] += int((before & sure).sum())
            counts["coarse_wrong_uncertain"] += int((before & ~sure).sum())
            counts["refined_wrong_certain"] += int((after & sure).sum())
            counts["refined_wrong_uncertain"] += int((after & ~sure).sum())

    def share(part: str, whole: str) -> Optional[float]:
        return round(counts[part] / counts[whole], 4) if counts[whole] else None

    return {**counts, "certain_share": round(counts["certain"] / max(counts["certain"] + counts["uncertain"], 1), 4),
            "coarse_wrong_among_certain": share("coarse_wrong_certain", "certain"),
            "coarse_wrong_among_uncertain": share("coarse_wrong_uncertain", "uncertain"),
            "refined_wrong_among_certain": share("refined_wrong_certain", "certain"),
            "refined_wrong_among_uncertain": share("refined_wrong_uncertain", "uncertain")}


def run(*, num_images: int = 20, height: int = 128, width: int = 160, objects: int = 3, theta: float = DEFAULT_THETA,
        iterations: int = 5, seed: int = 0) -> List[Dict[str, Any]]:
    """One row per refiner (see the module docstring)."""
    rows = []
    with tempfile.TemporaryDirectory() as root:
        data = write_dataset(root, num_images, height, width, objects, seed)
        with open(os.path.join(root, "coarse.json")) as f:
            coarse = {a["id"]: a["segmentation"] for a in json.load(f)["annotations"]}
        truth_by_coarse = {_key(segmentation_to_mask(coarse[annotation_id], height, width)): mask
                           for objects_of_image in data["truth"].values() for annotation_id, mask in objects_of_image}
        refiners = {
            "SAMRefiner, tiny SAM, random weights": SAMRefiner(SamEngine(build_tiny_sam(seed=0)), iterations=iterations),
            "oracle (returns the ground truth)": LookupRefiner(truth_by_coarse, "oracle"),
            "shifted oracle (ground truth, boundary moved 1 px)": LookupRefiner(truth_by_coarse, "shifted"),
            "identity (returns the coarse mask)": LookupRefiner(truth_by_coarse, "identity"),
        }
        for name, refiner in refiners.items():
            output = os.path.join(root, f"refined_{len(rows)}.json")
            options = JobOptions(model_type="tiny", workers=0, progress=False, uncertainty=True, uncertainty_theta=theta)
            refine_annotation_file(os.path.join(root, "coarse.json"), os.path.join(root, "images"), output, options, refiner=refiner)
            rows.append({"refiner": name, "images": num_images, "objects": num_images * objects, "theta": theta,
                         **measure(root, data, output, theta), **sidecar_sizes(uncertainty_path(output), theta),
                         "output_bytes_per_mask": round(os.path.getsize(output) / (num_images * objects), 1)})
    return rows


def markdown(rows: List[Dict[str, Any]]) -> str:
    """The rows as the table of docs/uncertainty.md."""
    lines = ["| refiner | certain pixels | coarse wrong: certain | coarse wrong: uncertain | refined wrong: certain | refined wrong: uncertain |",
             "|---|---|---|---|---|---|"]
    percent = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for row in rows:
        lines.append(f"| {row['refiner']} | {percent(row['certain_share'])} | {percent(row['coarse_wrong_among_certain'])} | "
                     f"{percent(row['coarse_wrong_among_uncertain'])} | {percent(row['refined_wrong_among_certain'])} | "
                     f"{percent(row['refined_wrong_among_uncertain'])} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tools/benchmark.py uncertainty``."""
    from .. import cli
    from .refiner import image_size

    parser.add_argument("--images", type=cli.positive_int, default=20)
    parser.add_argument("--image-size", default="128x160", type=image_size, help="HxW")
    parser.add_argument("--objects", type=cli.positive_int, default=3, help="objects per image")
    parser.add_argument("--theta", type=float, default=DEFAULT_THETA)
    parser.add_argument("--iterations", type=cli.positive_int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append results as JSON lines to this file")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py uncertainty", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    height, width = args.image_size
    rows = run(num_images=args.images, height=height, width=width, objects=args.objects, theta=args.theta,
               iterations=args.iterations, seed=args.seed)
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    print(markdown(rows))
    return 0
