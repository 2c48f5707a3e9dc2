"""Conversions between COCO segmentations (RLE, polygons) and bool masks, and mask geometry."""

from __future__ import annotations

from typing import Any, Dict, List, Union

import numpy as np
from pycocotools import mask as mask_utils

Segmentation = Union[Dict[str, Any], List[List[float]]]


def rle_encode(mask: np.ndarray) -> Dict[str, Any]:
    """Encode a bool ``H x W`` mask as compressed COCO RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_encode_many(masks: np.ndarray) -> List[Dict[str, Any]]:
    """Encode bool ``N x H x W`` masks as a list of compressed RLEs with str counts."""
    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def segmentation_to_rle(segmentation: Segmentation, height: int, width: int) -> Dict[str, Any]:
    """Any COCO segmentation (polygons, uncompressed RLE, compressed RLE with str or bytes counts) to a
    compressed RLE with bytes counts, as pycocotools' C functions want it.

    Raises ``ValueError`` when the segmentation is malformed or its size disagrees with ``height, width``.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if len(polygons) != len(segmentation):
            raise ValueError("polygon with fewer than 3 points")
        if not polygons:
            raise ValueError("segmentation is an empty polygon list")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"segmentation must be polygons or an RLE dict with 'size' and 'counts', got {type(segmentation).__name__}")
    size = [int(s) for s in segmentation["size"]]
    if size != [height, width]:
        raise ValueError(f"RLE size {size[0]}x{size[1]} does not match the image size {height}x{width}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": size, "counts": counts}


def segmentation_to_mask(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation to a bool ``height x width`` mask (see :func:`segmentation_to_rle`)."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width)).astype(bool)


def mask_to_xywh(mask: np.ndarray) -> List[float]:
    """COCO ``[x, y, w, h]`` of the pixels of a bool ``H x W`` mask, as pycocotools computes it from RLE
    (``w = x_max - x_min + 1``); ``[0, 0, 0, 0]`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def masks_to_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of bool ``N x H x W`` masks as int64 ``N x 4`` ``x1, y1, x2, y2`` with inclusive
    ``x2, y2`` (the largest foreground column and row); all zeros for an empty mask."""
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.int64)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # N x H
    cols = masks.any(axis=1)  # N x W
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = np.argmax(cols, axis=1)
    boxes[:, 1] = np.argmax(rows, axis=1)
    boxes[:, 2] = w - 1 - np.argmax(cols[:, ::-1], axis=1)
    boxes[:, 3] = h - 1 - np.argmax(rows[:, ::-1], axis=1)
    boxes[~nonempty] = 0
    return boxes


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired bool masks ``N x H x W`` -> float64 ``N``; 1.0 where both masks are empty."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    inter = np.logical_and(a, b).sum(axis=1)
    union = np.logical_or(a, b).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
