"""Distance-guided point prompts (SAMRefiner, Sec. 3.2).

Two distance transforms (``distance``):

- ``exact`` (default): exact Euclidean distance transforms, float64 square roots of integer squared
  distances, so equal distances tie exactly and "first in row-major order" is well defined. Computed on
  each mask's box crop, so their cost follows the object's size, not the image's.
- ``raster``: the authors' FastGeodis raster scan (:mod:`.raster`), float32 values equal to theirs. The
  interior distance is computed on the box crop (exact for this scan too, see :func:`interior_distance`);
  the background distance of the negative point on the whole image, as there, because paths of the scan
  may leave the box.

The image border is not background: a mask touching it is as deep as its pixels are far from real
background, as in the authors' code.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

from .raster import raster_distance

DISTANCE_KINDS = ("exact", "raster")
# Masks x pixels of one whole-image raster scan for negative points (bounds its float32 buffers).
_RASTER_BATCH_PIXELS = 1 << 24


class InteriorDistance:
    """Distance of each pixel of a mask's box crop to the nearest background pixel (0 on background).

    Attributes:
        values: float64 ``h x w``, the crop ``[y1:y2+1, x1:x2+1]`` of the full-image distance map
            (for the exact transform computed from ``squared`` when first read).
        origin: ``(x1, y1)`` of the crop in the image.
        squared: the exact transform's integer squared distances (float64, ``values ** 2`` exactly), which
            make ties and the Gaussian's few distinct values cheap; None for the raster transform.
    """

    def __init__(self, values: Optional[np.ndarray], origin: Tuple[int, int], squared: Optional[np.ndarray] = None):
        if values is None and squared is None:
            raise ValueError("InteriorDistance needs values or squared distances")
        self._values = values
        self.origin = origin
        self.squared = squared

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.sqrt(self.squared)
        return self._values

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.squared if self._values is None else self._values).shape

    @property
    def peak(self) -> Tuple[int, int, float]:
        """``(x, y, depth)`` of the deepest pixel; the first in row-major order among ties."""
        ranked = self.values if self.squared is None else self.squared  # same order and ties
        flat = int(np.argmax(ranked))
        y, x = divmod(flat, ranked.shape[1])
        return self.origin[0] + x, self.origin[1] + y, float(np.sqrt(ranked[y, x]) if self.squared is not None else ranked[y, x])


# OpenCV's exact algorithm is ~8x faster than SciPy's but returns float32 whose last bits vary from call
# to call (opencv-python 5.0). Squaring and rounding recovers the exact integer squared distance while
# its error stays under 0.5, which holds with a wide margin below this distance.
_OPENCV_EXACT_BELOW = 1000.0


def squared_euclidean_distance(nonzero: np.ndarray) -> np.ndarray:
    """float64 exact integer squared distance of each nonzero pixel of a 2-D array to the nearest zero
    pixel (0 on zeros); pixels outside the array are not zeros."""
    binary = nonzero.view(np.uint8) if nonzero.dtype == bool else nonzero.astype(np.uint8, copy=False)
    approx = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if approx.size and approx.max() >= _OPENCV_EXACT_BELOW:
        approx = distance_transform_edt(nonzero)
    squared = np.square(approx, dtype=np.float64)
    return np.rint(squared, out=squared)


def euclidean_distance(nonzero: np.ndarray) -> np.ndarray:
    """float64 distance of each nonzero pixel of a 2-D array to the nearest zero pixel (0 on zeros);
    pixels outside the array are not zeros. Bit-identical to ``scipy.ndimage.distance_transform_edt``
    (whose values are correctly rounded square roots of the same integers)."""
    return np.sqrt(squared_euclidean_distance(nonzero))


def check_distance(distance: str) -> None:
    if distance not in DISTANCE_KINDS:
        raise ValueError(f"distance must be one of {DISTANCE_KINDS}, got {distance!r}")


def interior_distance(mask: np.ndarray, box: np.ndarray, distance: str = "exact") -> InteriorDistance:
    """Distance transform of a non-empty bool ``H x W`` mask inside its tight inclusive ``box`` (x1, y1, x2, y2).

    The crop gets a 1-pixel background ring on every side that is not the image border. For the exact
    transform: for any pixel in the box, the nearest background pixel outside the box is never nearer
    than the ring pixel obtained by clamping it to the ring. For the raster scan: ring pixels are seeds
    (0) in the crop and in the whole image, and a box pixel's update reads only its 8 neighbours, which
    are box or ring pixels. Either way the crop gives exactly the full-image distances.
    """
    check_distance(distance)
    height, width = mask.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_x1, pad_y1 = min(x1, 1), min(y1, 1)
    pad_x2, pad_y2 = min(width - 1 - x2, 1), min(height - 1 - y2, 1)
    crop = np.zeros((y2 - y1 + 1 + pad_y1 + pad_y2, x2 - x1 + 1 + pad_x1 + pad_x2), dtype=np.uint8)
    inner = (slice(pad_y1, pad_y1 + y2 - y1 + 1), slice(pad_x1, pad_x1 + x2 - x1 + 1))
    crop[inner] = mask[y1 : y2 + 1, x1 : x2 + 1]
    if distance == "raster":
        values = raster_distance(crop)[inner].astype(np.float64)
        return InteriorDistance(values=values, origin=(x1, y1))
    squared = np.ascontiguousarray(squared_euclidean_distance(crop)[inner])
    return InteriorDistance(values=None, origin=(x1, y1), squared=squared)


def negative_point(mask: np.ndarray, box: np.ndarray) -> Optional[Tuple[int, int]]:
    """The background pixel of ``mask[y1:y2, x1:x2]`` farthest from the foreground, as ``(x, y)``
    (exact Euclidean distances).

    As in the authors' code the region excludes the box's last row and column. Returns None when the
    region is empty (a one-pixel-wide mask) or holds no background (the authors then place the point at
    the image origin; we give no negative point instead).
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    # All foreground lies in the inclusive box, so the crop gives exact full-image distances; the
    # squared distances have the same maximum and ties.
    squared = squared_euclidean_distance(~mask[y1 : y2 + 1, x1 : x2 + 1])[:-1, :-1]
    return _farthest(squared, x1, y1)


def raster_negative_points(masks: np.ndarray, boxes: np.ndarray) -> List[Optional[Tuple[int, int]]]:
    """:func:`negative_point` of each non-empty bool ``N x H x W`` mask with the raster scan, as the authors:
    on the whole image (the scan's paths may leave the box), a few masks per scan."""
    height, width = masks.shape[1:]
    per_scan = max(1, _RASTER_BATCH_PIXELS // (height * width))
    points: List[Optional[Tuple[int, int]]] = []
    for start in range(0, len(masks), per_scan):
        distances = raster_distance(~masks[start : start + per_scan])
        for distance, (x1, y1, x2, y2) in zip(distances, boxes[start : start + per_scan].astype(np.int64)):
            points.append(None if x2 <= x1 or y2 <= y1 else _farthest(distance[y1:y2, x1:x2], x1, y1))
    return points


def _farthest(distance: np.ndarray, x1: int, y1: int) -> Optional[Tuple[int, int]]:
    """``(x, y)`` of the first maximum in row-major order of a region whose top-left is ``(x1, y1)``;
    None when it is not positive."""
    flat = int(np.argmax(distance))
    y, x = divmod(flat, distance.shape[1])
    if distance[y, x] <= 0:
        return None
    return x1 + x, y1 + y


def point_prompts(
    masks: np.ndarray, boxes: np.ndarray, depths: List[InteriorDistance], add_negative: bool, distance: str = "exact"
) -> Tuple[np.ndarray, np.ndarray]:
    """Point prompts of non-empty bool ``N x H x W`` masks.

    Args:
        boxes: int ``N x 4`` tight inclusive boxes.
        depths: the :func:`interior_distance` of each mask.
        add_negative: add the :func:`negative_point` (label 0, or label -1 "no point" when there is none).
        distance: ``exact`` or ``raster`` (for the negative point; ``depths`` carry the positive's).

    Returns:
        coords float32 ``N x P x 2`` (x, y) in image pixels and labels int64 ``N x P``; P = 1 or 2.
    """
    check_distance(distance)
    count = masks.shape[0]
    num_points = 2 if add_negative else 1
    coords = np.zeros((count, num_points, 2), dtype=np.float32)
    labels = np.ones((count, num_points), dtype=np.int64)
    if add_negative:
        if distance == "raster":
            negatives = raster_negative_points(masks, boxes)
        else:
            negatives = [negative_point(mask, box) for mask, box in zip(masks, boxes)]
    for i in range(count):
        x, y, _ = depths[i].peak
        coords[i, 0] = (x, y)
        if add_negative:
            if negatives[i] is None:
                labels[i, 1] = -1
            else:
                coords[i, 1] = negatives[i]
                labels[i, 1] = 0
    return coords, labels
