"""Non-adversarial noisy masks: morphological (the SegRefiner-style baseline and Phoenix's ``p_morph``
mixing, C.1.3), blob noise (held out from training, for tests), and SUM's one-point SAM pseudo-labels
(``--noise sam``, SUM D.2; the point is drawn by SUM's uncertainty-aware rule when the target has a
certainty map, Sec. 3.2.2).

All operate on bool ``H x W`` masks at the image's size and draw from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import cv2
import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from ...sam.engine import ImageEmbedding, SamEngine
from ...uncertainty.losses import sample_by_certainty
from .config import SamNoiseConfig

MORPH_OPS = ("erode", "dilate", "jitter")


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _radius_range(mask: np.ndarray) -> int:
    """The largest structuring radius for a mask: 8% of the side of a square of the mask's area (>= 1)."""
    return max(1, int(round(0.08 * np.sqrt(max(int(mask.sum()), 1)))))


def morphological_noise(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Erode, dilate, or jitter the boundary of a non-empty bool ``H x W`` mask (one op, drawn uniformly).

    The radius r is drawn from ``1 .. 0.08 sqrt(area)``; ``jitter`` flips up to 12 disks of radius up to r
    centred on the boundary band to foreground or background. Never returns an empty mask (an
    emptied mask is replaced by the target dilated by one pixel).
    """
    op = MORPH_OPS[int(rng.integers(len(MORPH_OPS)))]
    radius = int(rng.integers(1, _radius_range(mask) + 1))
    u8 = mask.astype(np.uint8)
    if op == "erode":
        noisy = cv2.erode(u8, _disk(radius))
    elif op == "dilate":
        noisy = cv2.dilate(u8, _disk(radius))
    else:
        noisy = u8.copy()
        band = cv2.dilate(u8, _disk(radius)) ^ cv2.erode(u8, _disk(radius))
        ys, xs = np.nonzero(band)
        for _ in range(int(rng.integers(1, 13)) if ys.size else 0):
            k = int(rng.integers(ys.size))
            r = int(rng.integers(1, radius + 1))
            cv2.circle(noisy, (int(xs[k]), int(ys[k])), r, int(rng.integers(2)), thickness=-1)
    noisy = noisy.astype(bool)
    if not noisy.any():
        noisy = cv2.dilate(u8, _disk(1)).astype(bool)
    return noisy


def blob_noise(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 1-3 random ellipses near the mask and cut 1-3 from inside it (a noise kind no trainer uses,
    so a test can measure refinement on noise the model never saw). Never returns an empty mask."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    y1, y2, x1, x2 = ys.min(), ys.max(), xs.min(), xs.max()
    side = max(4, int(max(y2 - y1, x2 - x1) + 1))
    noisy = mask.astype(np.uint8).copy()
    for value, count in ((1, int(rng.integers(1, 4))), (0, int(rng.integers(1, 4)))):
        for _ in range(count):
            if value == 1:  # centred around the box, spilling over it
                cy = int(rng.integers(max(0, y1 - side // 4), min(height, y2 + side // 4 + 1)))
                cx = int(rng.integers(max(0, x1 - side // 4), min(width, x2 + side // 4 + 1)))
            else:
                k = int(rng.integers(ys.size))
                cy, cx = int(ys[k]), int(xs[k])
            axes = (int(rng.integers(1, max(2, side // 5))), int(rng.integers(1, max(2, side // 5))))
            cv2.ellipse(noisy, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, value, thickness=-1)
    noisy = noisy.astype(bool)
    return noisy if noisy.any() else mask.copy()


@dataclasses.dataclass
class SamPseudoLabel:
    """SAM's mask for one point of a target (SUM D.2).

    Attributes:
        logits: float ``m x m`` low-res logits of the candidate most aligned with the target.
        mask: bool ``H x W`` (logits > 0 at the image's size).
        point: ``(x, y)`` of the point prompt.
        iou_with_target, predicted_iou, stability: what the filters looked at.
    """

    logits: torch.Tensor
    mask: np.ndarray
    point: Tuple[int, int]
    iou_with_target: float
    predicted_iou: float
    stability: float


def sam_pseudo_label(engine: SamEngine, embedding: ImageEmbedding, target: np.ndarray, rng: np.random.Generator,
                     config: SamNoiseConfig, certainty: Optional[np.ndarray] = None) -> Optional[SamPseudoLabel]:
    """SUM's noisy input for a target: SAM (the frozen, original model of ``engine``) prompted with one
    point drawn uniformly from the target, multimask output, the candidate with the highest IoU with the
    target; kept when that IoU >= 0.7, SAM's predicted IoU >= 0.88 and its stability >= 0.95 (B.1, D.2).
    Up to ``config.tries`` points are tried; None when every one is filtered out.

    With float ``H x W`` ``certainty`` (a pseudo-target's c, SUM Sec. 3.2.2) target pixel i is drawn with
    probability ``c_i / Σ c`` instead (:func:`refine_hooks.uncertainty.sample_by_certainty`; uniformly
    when the target's certainty is 0 everywhere), from a torch generator seeded by ``rng``.

    Stability is computed as SAM's automatic mask generator does (IoU of the masks thresholded at -1
    and +1), on the logits at the image's size.
    """
    ys, xs = np.nonzero(target)
    target_t = torch.from_numpy(target).to(engine.device)
    generator = None
    if certainty is not None:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        weights, region = torch.from_numpy(np.ascontiguousarray(certainty)), torch.from_numpy(np.ascontiguousarray(target))
    for _ in range(config.tries):
        if generator is None:
            k = int(rng.integers(ys.size))
            point = (int(xs[k]), int(ys[k]))
        else:
            x, y = sample_by_certainty(weights, region, 1, generator)[0].tolist()
            point = (int(x), int(y))
        coords = torch.tensor([[[point[0], point[1]]]], dtype=torch.float32)
        logits, predicted = engine.decode(embedding, point_coords=coords, point_labels=torch.ones((1, 1), dtype=torch.int64),
                                          multimask_output=True)
        full = engine.upsample_logits(logits[0], embedding)  # 3 x H x W
        masks = full > 0
        inter = (masks & target_t).flatten(1).sum(1).double()
        union = (masks | target_t).flatten(1).sum(1).double()
        ious = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        best = int(torch.argmax(ious))
        stability = float(calculate_stability_score(full[best : best + 1], 0.0, 1.0)[0])
        iou, predicted_iou = float(ious[best]), float(predicted[0, best])
        if iou >= config.min_iou_with_target and predicted_iou >= config.min_predicted_iou and stability >= config.min_stability:
            return SamPseudoLabel(logits=logits[0, best], mask=masks[best].cpu().numpy(), point=point,
                                  iou_with_target=iou, predicted_iou=predicted_iou, stability=stability)
    return None
