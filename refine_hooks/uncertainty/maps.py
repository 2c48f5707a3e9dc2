"""SUM's uncertainty map of a refined pseudo-label, framework-free.

SUM (Liu et al., "Uncertainty-aware Fine-tuning of Segmentation Foundation Models", NeurIPS 2024),
Sec. 3.2.3, eq. 3: the uncertainty of pixel i is ``u_i = |σ(s_i) − σ(r_i)|``, with ``σ(s)`` the
probabilities of the coarse prediction (there: SAM's logits of the pseudo-label) and ``σ(r)`` those of the
refinement module's prediction; the certainty is ``c_i = 1 − u_i`` (Sec. 3.2.1). Here the refiner is
SAMRefiner (or a trained refiner built on it) and the coarse side is a detector's pseudo-label:

- a detector's soft mask where there is one (Mask R-CNN's pasted mask probabilities, Mask2Former's mask
  probabilities; the framework hooks keep them when asked);
- for a binary coarse mask, a signed-distance sigmoid: ``σ(s_i) = sigmoid(d_i / width)`` with ``d_i`` the
  signed distance from pixel i to the mask's boundary in pixels (positive inside; the boundary runs between
  the last mask pixel and the first background pixel, so the pixels on either side of it have ``d = ±0.5``)
  and ``width`` = :data:`BINARY_COARSE_WIDTH` = 0.5 px by default: the pixels along the boundary get 0.73 /
  0.27, the next ones 0.95 / 0.05. It says "the mask, with its boundary known to about a pixel". The image's
  own border is no boundary (a mask touching it continues beyond it).

The map is ``u`` on the union of both masks' boxes and 0 elsewhere (the refined probabilities are only
computed there, :attr:`refine_hooks.refiners.RefineResult.probabilities`).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.special import expit

from ..data.windows import Box, WindowedMap, mask_box, union_box

# SUM, B.1 / eq. 2: pixels with certainty above θ count as certain (UA Dice keeps only those).
DEFAULT_THETA = 0.6
# Width (pixels) of the signed-distance sigmoid that stands for the probabilities of a binary coarse mask.
BINARY_COARSE_WIDTH = 0.5
# Maps are stored as uint8 levels: u = level / 255.
LEVELS = 255


def binary_mask_probability(mask: np.ndarray, box: Sequence[int], width: float = BINARY_COARSE_WIDTH) -> np.ndarray:
    """The signed-distance sigmoid of a binary mask (module docstring) on an inclusive ``box``.

    Args:
        mask: bool ``H x W``, the whole mask; every pixel of it must lie inside ``box``.
        box: ``x1, y1, x2, y2``, the window to compute.
        width: the sigmoid's width in pixels (> 0).

    Returns:
        float32 ``(y2 - y1 + 1) x (x2 - x1 + 1)``.
    """
    if width <= 0:
        raise ValueError(f"the width of the binary mask's sigmoid must be positive, got {width}")
    height, image_width = mask.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    window = mask[y1 : y2 + 1, x1 : x2 + 1]
    # One pixel around the window decides the distances exactly: beyond a side inside the image it is
    # background (the mask lies inside the box); beyond the image's border the mask continues.
    padded = np.pad(window, 1, mode="edge")
    if y1 > 0:
        padded[0] = False
    if y2 < height - 1:
        padded[-1] = False
    if x1 > 0:
        padded[:, 0] = False
    if x2 < image_width - 1:
        padded[:, -1] = False
    # (A transform with nothing to measure the distance to is infinite: no boundary, certain everywhere.)
    inside = distance_transform_edt(padded)[1:-1, 1:-1] if not padded.all() else np.full(window.shape, np.inf)
    outside = distance_transform_edt(~padded)[1:-1, 1:-1] if padded.any() else np.full(window.shape, np.inf)
    signed = np.where(window, inside - 0.5, 0.5 - outside)
    return expit(signed / width).astype(np.float32)


def coarse_probability(coarse: np.ndarray, box: Sequence[int], detector: Optional[WindowedMap] = None,
                       width: float = BINARY_COARSE_WIDTH) -> np.ndarray:
    """σ(s) on ``box``: the detector's probabilities (float in [0, 1], 0 outside their window) when given,
    else :func:`binary_mask_probability` of the bool ``H x W`` coarse mask. float32 on the box."""
    if detector is not None:
        values = detector.crop(box, dtype=np.float32)
        if not np.issubdtype(detector.values.dtype, np.floating):
            values /= LEVELS
        return values
    return binary_mask_probability(coarse, box, width)


def uncertainty_map(coarse: np.ndarray, refined: np.ndarray, refined_probability: WindowedMap,
                    coarse_detector: Optional[WindowedMap] = None, width: float = BINARY_COARSE_WIDTH) -> WindowedMap:
    """``u = |σ(s) − σ(r)|`` (SUM eq. 3) on the union of the coarse and refined masks' boxes.

    Args:
        coarse, refined: bool ``H x W`` masks (at least one non-empty).
        refined_probability: σ(r) on a window holding that union (the refiner's output).
        coarse_detector: the detector's probabilities σ(s) of the coarse mask, if it had any.
        width: of the signed-distance sigmoid used for a binary coarse mask.

    Returns:
        float32 map on the union box (0 elsewhere).
    """
    box = union_box(mask_box(coarse), mask_box(refined))
    if box is None:
        raise ValueError("uncertainty_map needs a non-empty coarse or refined mask")
    rx1, ry1, rx2, ry2 = refined_probability.box
    if box[0] < rx1 or box[1] < ry1 or box[2] > rx2 or box[3] > ry2:
        raise ValueError(f"the refined probabilities cover {refined_probability.box}, not the masks' box {box}")
    refined_values = refined_probability.crop(box, dtype=np.float32)
    values = np.abs(coarse_probability(coarse, box, coarse_detector, width) - refined_values)
    return WindowedMap(values.astype(np.float32), box[0], box[1])


def quantize(values: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 levels ``round(255 v)`` (error at most 1/510)."""
    return np.rint(np.clip(values, 0.0, 1.0) * LEVELS).astype(np.uint8)


def certainty_from_levels(levels: np.ndarray) -> np.ndarray:
    """uint8 uncertainty levels -> float32 certainty ``c = 1 − level / 255``."""
    return (1.0 - levels.astype(np.float32) / LEVELS).astype(np.float32)


def certainty_summary(levels: WindowedMap, coarse: np.ndarray, refined: np.ndarray, theta: float = DEFAULT_THETA) -> Dict[str, Optional[float]]:
    """The per-record numbers stored in ``refinement``.

    ``mean_certainty``: mean c over the pixels either mask claims (where the two can disagree);
    ``certain_fraction``: the fraction of the refined mask's pixels with c > θ (SUM's "certain" pixels).

    Args:
        levels: uint8 uncertainty levels on their window (0 outside).
        coarse, refined: bool ``H x W``.
    """
    box = levels.box
    certainty = certainty_from_levels(levels.values)
    x1, y1, x2, y2 = box
    either = coarse[y1 : y2 + 1, x1 : x2 + 1] | refined[y1 : y2 + 1, x1 : x2 + 1]
    mine = refined[y1 : y2 + 1, x1 : x2 + 1]
    # Pixels of the masks outside the window have c = 1 (none exist when the window is the masks' union box).
    outside_either = int(np.count_nonzero(coarse | refined)) - int(np.count_nonzero(either))
    outside_mine = int(np.count_nonzero(refined)) - int(np.count_nonzero(mine))
    total_either = int(np.count_nonzero(either)) + outside_either
    total_mine = int(np.count_nonzero(mine)) + outside_mine
    mean = (float(certainty[either].sum(dtype=np.float64)) + outside_either) / total_either if total_either else None
    certain = (int(np.count_nonzero(certainty[mine] > theta)) + outside_mine) / total_mine if total_mine else None
    return {"mean_certainty": _round(mean), "certain_fraction": _round(certain)}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 4)


__all__ = [
    "BINARY_COARSE_WIDTH",
    "Box",
    "DEFAULT_THETA",
    "LEVELS",
    "binary_mask_probability",
    "certainty_from_levels",
    "certainty_summary",
    "coarse_probability",
    "quantize",
    "uncertainty_map",
]
