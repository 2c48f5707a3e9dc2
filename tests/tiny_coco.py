"""A tiny COCO dataset on disk, shared by the framework adapters' tests (no framework imported here)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np
from PIL import Image

from refine_hooks.data.masks import mask_to_xywh, rle_encode

CLASSES = ("box", "ellipse")
CATEGORIES = [{"id": 3, "name": "box", "supercategory": "shape"}, {"id": 7, "name": "ellipse", "supercategory": "shape"}]


def mask_polygons(mask: np.ndarray):
    """COCO/LVIS polygons (``[[x, y, x, y, ...], ...]``) of a bool mask's outer contours, as LVIS stores masks."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _shapes(rng: np.random.Generator, height: int, width: int):
    """1-3 (category id, bool mask) per image: axis-aligned boxes and ellipses."""
    out = []
    yy, xx = np.mgrid[:height, :width]
    for _ in range(int(rng.integers(1, 4))):
        h, w = int(rng.integers(height // 5, height // 2)), int(rng.integers(width // 5, width // 2))
        y0, x0 = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        if rng.random() < 0.5:
            mask = np.zeros((height, width), bool)
            mask[y0:y0 + h, x0:x0 + w] = True
            out.append((3, mask))
        else:
            cy, cx = y0 + h / 2, x0 + w / 2
            out.append((7, ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0))
    return out


def make_tiny_coco(root: str, *, num_images: int = 3, size=(96, 128), seed: int = 0, prefix: str = "img",
                   with_annotations: bool = True) -> str:
    """Write ``root/images/<prefix>_<i>.png`` and ``root/<prefix>_annotations.json``; returns the json path.

    Boxes are stored as polygons, ellipses as RLE (both forms mmdet and pycocotools read). Category ids
    3 and 7 are not contiguous, so label <-> id mapping mistakes show. ``with_annotations=False`` writes an
    image-info file (images and categories, no annotations), like COCO's unlabeled image info.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    height, width = size
    images, annotations = [], []
    for i in range(num_images):
        pixels = rng.integers(90, 130, size=(height, width, 3)).astype(np.uint8)
        file_name = f"{prefix}_{i}.png"
        image_id = 10 + i
        for category_id, mask in _shapes(rng, height, width):
            colour = rng.integers(0, 256, size=3)
            pixels[mask] = colour
            x, y, w, h = mask_to_xywh(mask)
            if category_id == 3:
                segmentation: Any = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            else:
                segmentation = rle_encode(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "segmentation": segmentation, "area": float(mask.sum()), "bbox": [x, y, w, h],
                                "iscrowd": 0})
        Image.fromarray(pixels).save(os.path.join(root, "images", file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    data: Dict[str, Any] = {"images": images, "categories": CATEGORIES}
    data["annotations"] = annotations if with_annotations else []
    path = os.path.join(root, f"{prefix}_annotations.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_refined_round(root: str) -> str:
    """A refined pseudo-label file with its uncertainty sidecar, written by the real pseudo-label job (tiny
    random SAM, 2 iterations) from a 3-image tiny COCO set's masks under ``root``; returns the refined file."""
    from refine_hooks.jobs import JobOptions, refine_annotation_file

    coarse = make_tiny_coco(root, num_images=3, seed=0)
    refined = os.path.join(root, "pseudo_refined.json")
    refine_annotation_file(coarse, os.path.join(root, "images"), refined,
                           JobOptions(model_type="tiny", workers=0, progress=False, uncertainty=True, refiner_kwargs={"iterations": 2}))
    return refined


def write_other_annotation_file(refined: str, path: str) -> str:
    """A copy of ``refined`` whose annotation ids are all different: ``refined``'s sidecar does not fit it."""
    with open(refined) as handle:
        coco = json.load(handle)
    with open(path, "w") as handle:
        json.dump(dict(coco, annotations=[dict(a, id=a["id"] + 1000) for a in coco["annotations"]]), handle)
    return path


def write_resized_sidecar(refined: str, path: str):
    """``refined``'s uncertainty sidecar, its first map claiming a twice larger image; returns that map's
    annotation id and the claimed ``(height, width)``."""
    from refine_hooks.uncertainty import KIND_UNCERTAINTY, MapEntry, MapFile, uncertainty_path, write_map_file

    maps = MapFile(uncertainty_path(refined))
    entries = [maps.entry(int(key)) for key in maps.keys()]
    first = entries[0]
    entries[0] = MapEntry.from_levels(first.key, first.height * 2, first.width * 2, first.levels())
    write_map_file(path, entries, kind=KIND_UNCERTAINTY)
    return first.key, (first.height * 2, first.width * 2)
