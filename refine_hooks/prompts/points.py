"""Distance-guided point prompts (SAMRefiner, Sec. 3.2).

Distances are exact Euclidean distance transforms: float64 square roots of integer squared distances,
so equal distances tie exactly and "first in row-major order" is well defined. They are computed on
each mask's box crop, so their cost follows the object's size, not the image's. The image border is not
background: a mask touching it is as deep as its pixels are far from real background, as in the
authors' code.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt


@dataclasses.dataclass
class InteriorDistance:
    """Distance of each pixel of a mask's box crop to the nearest background pixel (0 on background).

    Attributes:
        values: float64 ``h x w``, the crop ``[y1:y2+1, x1:x2+1]`` of the full-image distance map.
        origin: ``(x1, y1)`` of the crop in the image.
    """

    values: np.ndarray
    origin: Tuple[int, int]

    @property
    def peak(self) -> Tuple[int, int, float]:
        """``(x, y, depth)`` of the deepest pixel; the first in row-major order among ties."""
        flat = int(np.argmax(self.values))
        y, x = divmod(flat, self.values.shape[1])
        return self.origin[0] + x, self.origin[1] + y, float(self.values[y, x])


# OpenCV's exact algorithm is ~8x faster than SciPy's but returns float32 whose last bits vary from call
# to call (opencv-python 5.0). Squaring and rounding recovers the exact integer squared distance while
# its error stays under 0.5, which holds with a wide margin below this distance.
_OPENCV_EXACT_BELOW = 1000.0


def euclidean_distance(nonzero: np.ndarray) -> np.ndarray:
    """float64 distance of each nonzero pixel of a 2-D array to the nearest zero pixel (0 on zeros);
    pixels outside the array are not zeros. Bit-identical to ``scipy.ndimage.distance_transform_edt``."""
    approx = cv2.distanceTransform(nonzero.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if approx.size and approx.max() >= _OPENCV_EXACT_BELOW:
        return distance_transform_edt(nonzero)
    return np.sqrt(np.rint(approx.astype(np.float64) ** 2))


def interior_distance(mask: np.ndarray, box: np.ndarray) -> InteriorDistance:
    """Distance transform of a non-empty bool ``H x W`` mask inside its tight inclusive ``box`` (x1, y1, x2, y2).

    The crop gets a 1-pixel background ring on every side that is not the image border: for any pixel in
    the box, the nearest background pixel outside the box is never nearer than the ring pixel obtained
    by clamping it to the ring, so the crop gives exactly the full-image distances.
    """
    height, width = mask.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_x1, pad_y1 = min(x1, 1), min(y1, 1)
    pad_x2, pad_y2 = min(width - 1 - x2, 1), min(height - 1 - y2, 1)
    crop = np.zeros((y2 - y1 + 1 + pad_y1 + pad_y2, x2 - x1 + 1 + pad_x1 + pad_x2), dtype=np.uint8)
    crop[pad_y1 : pad_y1 + y2 - y1 + 1, pad_x1 : pad_x1 + x2 - x1 + 1] = mask[y1 : y2 + 1, x1 : x2 + 1]
    distance = euclidean_distance(crop)
    values = distance[pad_y1 : pad_y1 + y2 - y1 + 1, pad_x1 : pad_x1 + x2 - x1 + 1]
    return InteriorDistance(values=np.ascontiguousarray(values), origin=(x1, y1))


def negative_point(mask: np.ndarray, box: np.ndarray) -> Optional[Tuple[int, int]]:
    """The background pixel of ``mask[y1:y2, x1:x2]`` farthest from the foreground, as ``(x, y)``.

    As in the authors' code the region excludes the box's last row and column. Returns None when the
    region is empty (a one-pixel-wide mask) or holds no background (the authors then place the point at
    the image origin; we give no negative point instead).
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    # All foreground lies in the inclusive box, so the crop gives exact full-image distances.
    distance = euclidean_distance(~mask[y1 : y2 + 1, x1 : x2 + 1])[:-1, :-1]
    flat = int(np.argmax(distance))
    y, x = divmod(flat, distance.shape[1])
    if distance[y, x] <= 0:
        return None
    return x1 + x, y1 + y


def point_prompts(
    masks: np.ndarray, boxes: np.ndarray, depths: List[InteriorDistance], add_negative: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Point prompts of non-empty bool ``N x H x W`` masks.

    Args:
        boxes: int ``N x 4`` tight inclusive boxes.
        depths: the :func:`interior_distance` of each mask.
        add_negative: add the :func:`negative_point` (label 0, or label -1 "no point" when there is none).

    Returns:
        coords float32 ``N x P x 2`` (x, y) in image pixels and labels int64 ``N x P``; P = 1 or 2.
    """
    count = masks.shape[0]
    num_points = 2 if add_negative else 1
    coords = np.zeros((count, num_points, 2), dtype=np.float32)
    labels = np.ones((count, num_points), dtype=np.int64)
    for i in range(count):
        x, y, _ = depths[i].peak
        coords[i, 0] = (x, y)
        if add_negative:
            negative = negative_point(masks[i], boxes[i])
            if negative is None:
                labels[i, 1] = -1
            else:
                coords[i, 1] = negative
                labels[i, 1] = 0
    return coords, labels
