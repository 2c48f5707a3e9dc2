"""Split-then-merge (STM): semantic masks -> instance-like regions (SAMRefiner, Sec. 3.3, Alg. 1).

A semantic mask may hold several objects; one box around all of them would be a poor prompt. STM splits
a class mask into 8-connected components, drops specks, then greedily merges pairs of regions whose
union is box-like, so that the parts of one object broken by an occluder come back together.
"""

from __future__ import annotations

from typing import List

import cv2
import numpy as np

MIN_COMPONENT_PIXELS = 5


def _box_and_area(labels: np.ndarray, region: int):
    ys, xs = np.nonzero(labels == region)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    return (x1, y1, x2, y2), (x2 - x1 + 1) * (y2 - y1 + 1), xs.size


def should_merge(box_i, box_area_i, mask_area_i, box_j, box_area_j, mask_area_j, mu: float = 0.5) -> bool:
    """The merge rule of the authors' ``merge_regions``.

    Merge when ``box_area_i + box_area_j > mu * merged_box_area`` and
    ``(mask_area_i + mask_area_j) / merged_box_area > min(mu, min(fill_i, fill_j) - 0.1)`` with
    ``fill = mask area / own box area``. As in that code, own box areas count pixels (``+1``) while the
    merged box area does not, and a merged box of zero area merges.
    """
    x1, y1 = min(box_i[0], box_j[0]), min(box_i[1], box_j[1])
    x2, y2 = max(box_i[2], box_j[2]), max(box_i[3], box_j[3])
    merged_area = (x2 - x1) * (y2 - y1)
    if merged_area == 0:
        return True
    fill = min(mask_area_i / box_area_i, mask_area_j / box_area_j)
    return box_area_i + box_area_j > mu * merged_area and (mask_area_i + mask_area_j) / merged_area > min(mu, fill - 0.1)


def split_then_merge(mask: np.ndarray, mu: float = 0.5, min_pixels: int = MIN_COMPONENT_PIXELS) -> List[np.ndarray]:
    """Split a bool ``H x W`` semantic mask into regions and merge them back by :func:`should_merge`.

    Components of fewer than ``min_pixels`` pixels are dropped. Components are visited in OpenCV's
    label order (raster order of their first pixel); each region absorbs the later regions that pass the
    rule, its box and area updated after every merge.

    Returns:
        bool ``H x W`` masks, one per merged region, ordered by their first component.
    """
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    labels = labels.astype(np.int32)
    for component in range(1, count):
        if np.count_nonzero(labels == component) < min_pixels:
            labels[labels == component] = 0
    region_of = {c: c for c in range(1, count) if np.any(labels == c)}
    for i in range(1, count):
        if i not in region_of:
            continue
        target = region_of[i]
        box_i, box_area_i, mask_area_i = _box_and_area(labels, target)
        for j in range(i + 1, count):
            other = region_of.get(j)
            if other is None or other == target:
                continue
            box_j, box_area_j, mask_area_j = _box_and_area(labels, other)
            if should_merge(box_i, box_area_i, mask_area_i, box_j, box_area_j, mask_area_j, mu):
                labels[labels == other] = target
                for component, region in region_of.items():
                    if region == other:
                        region_of[component] = target
                box_i, box_area_i, mask_area_i = _box_and_area(labels, target)
    return [labels == region for region in sorted(set(region_of.values()))]
