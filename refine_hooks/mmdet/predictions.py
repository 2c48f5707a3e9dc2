"""Refine the ``pred_instances`` of mmdet ``DetDataSample`` s in place: the one routine behind
:class:`~refine_hooks.mmdet.MaskRefinementHook` and :class:`~refine_hooks.mmdet.RefinedDetector`.

Format conversion happens here and nowhere else: detector masks (bool for Mask R-CNN and SOLOv2,
float 0/1 for some Mask2Former versions) become bool ``N x H x W`` numpy for the refiner, and the
refined masks go back in the detector's own dtype and device. Scores and labels are untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.refiners.base import Refiner

from .images import SOURCE_INPUTS, SOURCE_PATH

# (data sample index, mask size (H, W)) -> (uint8 RGB H x W x 3, source name)
ImageGetter = Callable[[int, Tuple[int, int]], Tuple[np.ndarray, str]]


@dataclasses.dataclass
class RefineStats:
    """Counts of one validation / test run, for the log line and for tests."""

    images: int = 0
    images_refined: int = 0
    detections: int = 0
    refined: int = 0
    below_score: int = 0
    passed_through: int = 0
    samples_without_masks: int = 0
    image_sources: Dict[str, int] = dataclasses.field(default_factory=lambda: {SOURCE_PATH: 0, SOURCE_INPUTS: 0})
    fallback_reasons: List[str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        parts = [
            f"refined {self.refined} of {self.detections} detections in {self.images_refined} of {self.images} images",
            f"{self.below_score} below the score threshold and {self.passed_through} passed through by the refiner kept unrefined",
            f"refiner images: {self.image_sources[SOURCE_PATH]} read from img_path, "
            f"{self.image_sources[SOURCE_INPUTS]} reconstructed from the batch inputs",
        ]
        if self.fallback_reasons:
            parts.append(f"why inputs were used (first): {self.fallback_reasons[0]}")
        if self.samples_without_masks:
            parts.append(f"{self.samples_without_masks} data samples had no pred_instances.masks and were left alone")
        return "; ".join(parts)


def masks_to_bool(masks: torch.Tensor) -> np.ndarray:
    """Detector masks (``N x H x W`` bool, uint8 or float 0/1 tensor) -> bool numpy ``N x H x W``."""
    if masks.dtype == torch.bool:
        return masks.detach().cpu().numpy()
    if masks.is_floating_point():
        return (masks.detach() > 0.5).cpu().numpy()
    return (masks.detach() > 0).cpu().numpy()


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """float32 ``N x 4`` x1, y1, x2, y2 boxes enclosing bool ``N x H x W`` masks, in mmdet's convention
    (pixel edges: x2 = last column + 1, as ``mmdet.structures.mask.mask2bbox``); zeros for empty masks."""
    boxes = masks_to_xyxy(masks).astype(np.float32)
    nonempty = masks.reshape(masks.shape[0], -1).any(axis=1)
    boxes[nonempty, 2:] += 1.0
    return boxes


def _degenerate(boxes: torch.Tensor) -> torch.Tensor:
    """bool ``N``: boxes with no area (SOLOv2 and some Mask2Former versions return all zeros)."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


def _updated_boxes(boxes: torch.Tensor, coarse: np.ndarray, refined: np.ndarray, flags: np.ndarray,
                   boxes_from_refined_masks: Optional[bool]) -> torch.Tensor:
    """Boxes ``N x 4`` after refinement (see :func:`refine_data_samples`)."""
    update = _degenerate(boxes).cpu().numpy()
    if boxes_from_refined_masks is None:
        from_masks = np.all(np.abs(boxes.detach().float().cpu().numpy() - boxes_from_masks(coarse)) < 1e-3, axis=1)
        update |= flags & from_masks
    elif boxes_from_refined_masks:
        update |= flags
    if not update.any():
        return boxes
    index = np.flatnonzero(update)
    new_boxes = boxes.clone()
    new_boxes[torch.from_numpy(index).to(boxes.device)] = torch.from_numpy(boxes_from_masks(refined[index])).to(boxes)
    return new_boxes


def refine_data_samples(
    refiner: Refiner,
    data_samples: Sequence,
    get_image: ImageGetter,
    *,
    score_thr: float = 0.0,
    keep_unrefined: bool = False,
    boxes_from_refined_masks: Optional[bool] = None,
    stats: Optional[RefineStats] = None,
) -> RefineStats:
    """Refine ``sample.pred_instances.masks`` of every sample, in place.

    Detections with ``score >= score_thr`` are refined; the others keep their masks. Every sample gets
    ``pred_instances.refined`` (bool ``N``: the mask was replaced by the refiner's) and
    ``pred_instances.refine_iou`` (float32 ``N``: the refiner's predicted IoU, NaN where not refined);
    with ``keep_unrefined`` also ``pred_instances.unrefined_masks`` (the detector's masks, unchanged).
    Boxes: an empty detector box (SOLOv2; Mask2Former in some mmdet versions) is always replaced by its
    (refined) mask's box. ``boxes_from_refined_masks=None`` (auto) also replaces the box of a refined
    detection whose box is exactly its coarse mask's box (the detector derived it from the mask, as
    Mask2Former does in mmdet 3.3), and keeps box-head boxes (Mask R-CNN); True replaces the boxes of all
    refined detections, False only empty ones.
    Each sample's metainfo gets ``refine_image_source`` (``img_path`` or ``inputs``).

    Args:
        refiner: any :class:`~refine_hooks.refiners.Refiner`.
        data_samples: ``DetDataSample`` s as ``model.predict`` / ``test_step`` return them.
        get_image: ``get_image(i, (H, W)) -> (uint8 RGB H x W x 3, source)`` for sample ``i``.
        stats: counts to add to (a new :class:`RefineStats` when None).
    """
    stats = stats if stats is not None else RefineStats()
    images: List[np.ndarray] = []
    coarse: List[np.ndarray] = []
    todo: List[Tuple[object, np.ndarray, np.ndarray]] = []  # (instances, bool masks, selected indices)
    for i, sample in enumerate(data_samples):
        stats.images += 1
        instances = sample.get("pred_instances") if hasattr(sample, "get") else None
        if instances is None or "masks" not in instances:
            stats.samples_without_masks += 1
            continue
        masks = masks_to_bool(instances.masks)
        n = masks.shape[0]
        stats.detections += n
        scores = instances.scores.detach().float().cpu().numpy() if "scores" in instances else np.ones(n, np.float32)
        selected = np.flatnonzero(scores >= score_thr)
        stats.below_score += n - selected.size
        device = instances.masks.device
        instances.refined = torch.zeros(n, dtype=torch.bool, device=device)
        instances.refine_iou = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
        if keep_unrefined:
            instances.unrefined_masks = instances.masks.clone()
        if selected.size == 0:
            continue
        image, source = get_image(i, masks.shape[1:])
        sample.set_metainfo({"refine_image_source": source})
        stats.image_sources[source] = stats.image_sources.get(source, 0) + 1
        images.append(image)
        coarse.append(masks[selected])
        todo.append((instances, masks, selected))
    if not todo:
        return stats

    results = refiner.refine_batch(images, coarse)
    for (instances, masks, selected), result in zip(todo, results):
        stats.images_refined += 1
        refined_flags = result.refined
        stats.refined += int(refined_flags.sum())
        stats.passed_through += int((~refined_flags).sum())
        new_masks = masks.copy()
        new_masks[selected] = result.masks
        old = instances.masks
        # Only refined rows change: the others stay exactly the detector's (float masks stay unthresholded).
        rows = selected[refined_flags]
        out = old.clone()
        out[torch.from_numpy(rows).to(old.device)] = torch.from_numpy(new_masks[rows]).to(device=old.device,
                                                                                         dtype=old.dtype)
        instances.masks = out
        flags = np.zeros(masks.shape[0], dtype=bool)
        flags[selected] = refined_flags
        ious = np.full(masks.shape[0], np.nan, dtype=np.float32)
        ious[selected] = np.where(refined_flags, result.iou_predictions, np.nan)
        instances.refined = torch.from_numpy(flags).to(old.device)
        instances.refine_iou = torch.from_numpy(ious).to(old.device)
        if "bboxes" in instances:
            instances.bboxes = _updated_boxes(instances.bboxes, masks, new_masks, flags, boxes_from_refined_masks)
    return stats
