"""Helpers for the evaluation tests: the official Boundary IoU formula (a reference written from its
definition) and an LVIS-style variant of the generated COCO data."""

from __future__ import annotations

import copy

import cv2
import numpy as np


def official_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """The Boundary IoU paper's boundary: pad by one zero pixel, erode with a 3x3 kernel ``d`` times with
    ``d = max(1, round(ratio * diagonal))``, subtract from the mask (cv2, as the official API does)."""
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return (mask.astype(np.uint8) - eroded).astype(bool)


def make_lvis(gt: dict, seed: int = 0) -> dict:
    """Turn a generated COCO dict into an LVIS-style one: no crowd, frequencies r/c/f, per-image negative
    and not-exhaustive category lists."""
    rng = np.random.default_rng(seed)
    lvis = copy.deepcopy(gt)
    lvis["annotations"] = [a for a in lvis["annotations"] if not a["iscrowd"]]
    for a in lvis["annotations"]:
        a.pop("iscrowd")
    freqs = ["r", "c", "f"]
    for k, c in enumerate(lvis["categories"]):
        c["frequency"] = freqs[k % 3]
        c["synset"] = f"thing{c['id']}.n.01"
    cat_ids = [c["id"] for c in lvis["categories"]]
    present = {}
    for a in lvis["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    for img in lvis["images"]:
        absent = [c for c in cat_ids if c not in present.get(img["id"], set())]
        rng.shuffle(absent)
        img["neg_category_ids"] = sorted(int(c) for c in absent[: len(absent) // 2])
        here = sorted(present.get(img["id"], set()))
        img["not_exhaustive_category_ids"] = [int(c) for c in here[:1]] if rng.random() < 0.3 else []
    return lvis
