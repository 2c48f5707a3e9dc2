"""A generated COCO-format pseudo-label dataset with its images on disk (tests of the job)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np
from PIL import Image

from refine_hooks.data.masks import rle_encode


def _blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A bool ``H x W`` ellipse, slightly jagged, like a coarse pseudo-label."""
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask &= rng.random((height, width)) > 0.05
    return mask


def _polygon(mask: np.ndarray) -> List[List[float]]:
    """A polygon (one ring) around a mask's bounding box, as COCO files store polygons."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_coco_dataset(root: str, num_images: int = 6, seed: int = 0, sizes=((64, 80), (72, 96), (96, 64))) -> Dict[str, Any]:
    """Write ``num_images`` JPEG/PNG images under ``root/images`` and a COCO pseudo-label file
    ``root/pseudo.json`` with RLE (str), polygon, crowd (uncompressed RLE) and scored records, and one
    image without annotations. Returns the loaded COCO dict."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    next_id = 1
    for index in range(num_images):
        height, width = sizes[index % len(sizes)]
        pixels = (rng.random((height, width, 3)) * 60).astype(np.uint8)
        masks = [_blob(rng, height, width) for _ in range(int(rng.integers(2, 5)))]
        for mask in masks:  # objects brighter than the background, so SAM has something to see
            pixels[mask] += np.uint8(rng.integers(100, 190))
        file_name = f"{index:06d}.jpg" if index % 2 == 0 else f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), quality=95)
        image_id = 1000 + index
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "extra": "kept"})
        if index == num_images - 1:
            continue  # an image with zero annotations
        for slot, mask in enumerate(masks):
            if slot == 1:
                segmentation: Any = _polygon(mask)
            elif slot == 3:
                # uncompressed RLE, as COCO stores crowd regions
                segmentation = {"size": [height, width], "counts": _uncompressed_counts(mask.flatten(order="F"))}
            else:
                segmentation = rle_encode(mask)
            record = {
                "id": next_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": segmentation,
                "bbox": [0.0, 0.0, 1.0, 1.0],  # deliberately stale: the output recomputes it
                "area": 1.0,
                "iscrowd": 1 if slot == 3 else 0,
                "score": float(np.round(rng.uniform(0.2, 1.0), 3)),
                "pseudo_round": 1,
            }
            annotations.append(record)
            next_id += 1
    data = {"info": {"description": "generated"}, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "fg"}]}
    with open(os.path.join(root, "pseudo.json"), "w") as handle:
        json.dump(data, handle)
    return data


def _uncompressed_counts(flat: np.ndarray) -> List[int]:
    """COCO uncompressed RLE counts of a column-major flattened bool mask (starts with a 0-run)."""
    counts, current, run = [], False, 0
    for value in flat:
        if bool(value) == current:
            run += 1
        else:
            counts.append(run)
            current, run = bool(value), 1
    counts.append(run)
    return counts
