"""Generated training data: shapes on textured backgrounds, as COCO files or image/mask folder pairs.

Each object has its own texture (a colour with noise and stripes of a random direction) on a background
of another texture, so its outline is visible to an image encoder but not trivially by colour alone.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

from refine_hooks.data.masks import mask_to_xywh, rle_encode

# Texture amplitudes (0..255 scale): stripes of a random direction and period, and pixel noise.
STRIPES = 12.0
NOISE = 6.0


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(30, 226, size=3).astype(np.float32)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
    noise = rng.normal(0, NOISE, size=(height, width, 3))
    return np.clip(base + STRIPES * stripes + noise, 0, 255)


def _shape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A bool mask: an ellipse, a rotated rectangle or a random polygon, 12-45% of the image side."""
    mask = np.zeros((height, width), np.uint8)
    side = min(height, width)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    a, b = rng.uniform(0.12, 0.3) * side, rng.uniform(0.12, 0.3) * side
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(a), int(b)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        box = cv2.boxPoints(((cx, cy), (2 * a, 2 * b), float(rng.uniform(0, 90))))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 9))))
        radii = rng.uniform(0.5, 1.0, size=angles.size) * max(a, b)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask.astype(bool)


def make_scene(rng: np.random.Generator, height: int, width: int, objects: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """uint8 ``H x W x 3`` image and the visible bool mask of each of ``objects`` shapes (later ones on top;
    masks under 1% of the image after occlusion are dropped)."""
    while True:
        pixels = _texture(rng, height, width)
        masks: List[np.ndarray] = []
        for _ in range(objects):
            mask = _shape(rng, height, width)
            pixels[mask] = _texture(rng, height, width)[mask]
            masks = [m & ~mask for m in masks] + [mask]
        masks = [m for m in masks if m.sum() >= 0.01 * height * width]
        if masks:
            return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), masks


def make_shapes_coco(root: str, *, num_images: int, size=(128, 128), objects=(1, 3), seed: int = 0,
                     name: str = "shapes") -> str:
    """``root/<name>/*.png`` and ``root/<name>.json`` (COCO, RLE masks); returns the json path."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, masks = make_scene(rng, size[0], size[1], int(rng.integers(objects[0], objects[1] + 1)))
        file_name = f"{name}/{i:05d}.png"
        Image.fromarray(image).save(os.path.join(root, file_name))
        images.append({"id": i + 1, "file_name": file_name, "height": size[0], "width": size[1]})
        for mask in masks:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "segmentation": rle_encode(mask), "area": float(mask.sum()), "bbox": mask_to_xywh(mask)})
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as handle:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "shape"}]}, handle)
    return path


def make_shapes_pairs(root: str, *, num_images: int, size=(128, 128), seed: int = 0) -> Tuple[str, str]:
    """DIS5K-style ``root/im/*.jpg`` and ``root/gt/*.png`` (one object per image); returns both folders."""
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = os.path.join(root, "im"), os.path.join(root, "gt")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    for i in range(num_images):
        image, masks = make_scene(rng, size[0], size[1], 1)
        Image.fromarray(image).save(os.path.join(image_dir, f"{i:04d}.jpg"), quality=95)
        Image.fromarray((masks[0] * 255).astype(np.uint8)).save(os.path.join(mask_dir, f"{i:04d}.png"))
    return image_dir, mask_dir


def load_coco_masks(path: str, root: str) -> List[Dict]:
    """``[{"image": uint8 H x W x 3, "masks": bool N x H x W}]`` per image of a file from :func:`make_shapes_coco`."""
    from refine_hooks.data.images import load_image
    from refine_hooks.data.masks import segmentation_to_mask

    with open(path) as handle:
        data = json.load(handle)
    out = []
    for image in data["images"]:
        pixels = load_image(os.path.join(root, image["file_name"]))
        masks = [segmentation_to_mask(a["segmentation"], image["height"], image["width"])
                 for a in data["annotations"] if a["image_id"] == image["id"]]
        out.append({"image": pixels, "masks": np.stack(masks)})
    return out
