"""Refine a detector's predictions, whatever framework made them: the routine behind the mmdet and
detectron2 adapters, which only unpack their containers into :class:`Detections` and write back.

Format conversion happens here: detector masks (bool for Mask R-CNN and SOLOv2, float 0/1 for
Mask2Former) become bool ``N x H x W`` numpy for the refiner, and only the refined rows go back, in the
detector's own dtype and device (rows left alone stay exactly the detector's, float masks unthresholded).
Scores and labels are never touched.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.scores import meets_score_thr

from .base import Refiner

# (index of the image in the batch, mask size (H, W)) -> (uint8 RGB H x W x 3, name of where it came from)
ImageGetter = Callable[[int, Tuple[int, int]], Tuple[np.ndarray, str]]


@dataclasses.dataclass
class Detections:
    """One image's predictions as the detector returned them.

    Attributes:
        masks: ``N x H x W`` bool, uint8 or float 0/1 tensor at the image's size.
        scores: float ``N``, or None (no scores: see :mod:`refine_hooks.scores` for how unknown scores
            meet ``score_thr``).
        boxes: float ``N x 4`` ``x1, y1, x2, y2`` with x2 = last column + 1, or None.
    """

    masks: torch.Tensor
    scores: Optional[torch.Tensor] = None
    boxes: Optional[torch.Tensor] = None


@dataclasses.dataclass
class RefinedDetections:
    """What refinement made of one image's :class:`Detections` (same length, dtype and device).

    Attributes:
        masks: the detector's masks with the refined rows replaced.
        refined: bool ``N``: the mask was replaced by the refiner's.
        refine_iou: float32 ``N``: the refiner's predicted IoU, NaN where not refined.
        boxes: the boxes after :func:`updated_boxes` (None when the detections had none).
        source: where the refiner's image came from (``""`` when no detection was refined).
    """

    masks: torch.Tensor
    refined: torch.Tensor
    refine_iou: torch.Tensor
    boxes: Optional[torch.Tensor]
    source: str = ""


@dataclasses.dataclass
class RefineStats:
    """Counts of one validation / test run, for the log line and for tests.

    ``image_sources`` counts images per source name (the adapters name theirs, e.g. ``img_path`` and
    ``inputs`` for mmdet); ``source_labels`` says how the log line describes each source.
    """

    images: int = 0
    images_refined: int = 0
    detections: int = 0
    refined: int = 0
    below_score: int = 0
    passed_through: int = 0
    samples_without_masks: int = 0
    image_sources: Dict[str, int] = dataclasses.field(default_factory=dict)
    source_labels: Dict[str, str] = dataclasses.field(default_factory=dict)
    fallback_reasons: List[str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        parts = [
            f"refined {self.refined} of {self.detections} detections in {self.images_refined} of {self.images} images",
            f"{self.below_score} below the score threshold and {self.passed_through} passed through by the refiner kept unrefined",
        ]
        if self.image_sources:
            parts.append("refiner images: " + ", ".join(
                f"{count} {self.source_labels.get(source, 'from ' + source)}" for source, count in self.image_sources.items()))
        if self.fallback_reasons:
            parts.append(f"why the batch inputs were used (first): {self.fallback_reasons[0]}")
        if self.samples_without_masks:
            parts.append(f"{self.samples_without_masks} predictions had no masks and were left alone")
        return "; ".join(parts)


SOURCE_INPUTS = "inputs"  # the image was rebuilt from the detector's batch input


def fallback_image_getter(
    read_file: Callable[[int, Tuple[int, int]], Tuple[Optional[np.ndarray], str]],
    rebuild: Callable[[int, Tuple[int, int], str], np.ndarray],
    *,
    image_source: str,
    file_source: str,
    stats: "RefineStats",
) -> ImageGetter:
    """An :data:`ImageGetter` that reads the image file and falls back to rebuilding it from the batch.

    Args:
        read_file: ``(i, size) -> (uint8 RGB image or None, why not)`` from the file the input names.
        rebuild: ``(i, size, why the file was not used) -> uint8 RGB image`` from the batch input; raises
            ValueError when it cannot.
        image_source: ``"auto"`` (file first), ``file_source`` (the file or an error) or ``"inputs"``.
        file_source: the adapter's name of the file source (``img_path``, ``file_name``).
        stats: keeps the first reasons for falling back.
    """

    def get(i: int, size: Tuple[int, int]) -> Tuple[np.ndarray, str]:
        reason = f"image_source='{SOURCE_INPUTS}'"
        if image_source in ("auto", file_source):
            image, reason = read_file(i, size)
            if image is not None:
                return image, file_source
            if image_source == file_source:
                raise ValueError(f"image_source='{file_source}' but the refiner image cannot be read: {reason}")
        image = rebuild(i, size, reason)
        if len(stats.fallback_reasons) < 10:
            stats.fallback_reasons.append(reason)
        return image, SOURCE_INPUTS

    return get


def masks_to_bool(masks: torch.Tensor) -> np.ndarray:
    """Detector masks (``N x H x W`` bool, uint8 or float 0/1 tensor) -> bool numpy ``N x H x W``."""
    if masks.dtype == torch.bool:
        return masks.detach().cpu().numpy()
    if masks.is_floating_point():
        return (masks.detach() > 0.5).cpu().numpy()
    return (masks.detach() > 0).cpu().numpy()


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """float32 ``N x 4`` x1, y1, x2, y2 boxes enclosing bool ``N x H x W`` masks, pixel edges (x2 = last
    column + 1, as mmdet's ``mask2bbox`` and detectron2's ``BitMasks.get_bounding_boxes``); zeros for
    empty masks."""
    boxes = masks_to_xyxy(masks).astype(np.float32)
    nonempty = masks.reshape(masks.shape[0], -1).any(axis=1)
    boxes[nonempty, 2:] += 1.0
    return boxes


def degenerate_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """bool ``N``: boxes with no area (SOLOv2 and Mask2Former return all zeros)."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


def updated_boxes(boxes: torch.Tensor, coarse: np.ndarray, refined: np.ndarray, flags: np.ndarray,
                  boxes_from_refined_masks: Optional[bool]) -> torch.Tensor:
    """Boxes ``N x 4`` after refinement.

    An empty box is always replaced by its (refined) mask's box. ``boxes_from_refined_masks=None``
    (auto) also replaces the box of a refined detection whose box is exactly its coarse mask's box (the
    detector derived it from the mask, as Mask2Former does in mmdet 3.3) and keeps box-head boxes
    (Mask R-CNN); True replaces the boxes of all refined detections, False only empty ones.

    Args:
        boxes: float ``N x 4`` as the detector returned them.
        coarse, refined: bool ``N x H x W`` masks before and after refinement.
        flags: bool ``N``, the detections the refiner replaced.
    """
    update = degenerate_boxes(boxes).cpu().numpy()
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


def refine_detections(
    refiner: Optional[Refiner],
    detections: Sequence[Optional[Detections]],
    get_image: ImageGetter,
    *,
    score_thr: float = 0.0,
    boxes_from_refined_masks: Optional[bool] = None,
    stats: Optional[RefineStats] = None,
) -> List[Optional[RefinedDetections]]:
    """Refine the masks of a batch of images' detections in one ``refine_batch`` call.

    Detections with ``score >= score_thr`` are refined; the others keep their masks (detections without
    a score: :mod:`refine_hooks.scores`). The image of a
    batch entry is fetched only when it has something to refine.

    Args:
        refiner: any :class:`~refine_hooks.refiners.Refiner`; only called when some detection is selected,
            so callers may pass None for a batch without masks (and not load a model for it).
        detections: per image, its detections, or None for a prediction without masks (counted in
            ``stats.samples_without_masks``, its entry in the result is None).
        get_image: ``get_image(i, (H, W)) -> (uint8 RGB H x W x 3, source)`` for batch entry ``i``.
        boxes_from_refined_masks: see :func:`updated_boxes`.
        stats: counts to add to.

    Returns:
        per batch entry, a :class:`RefinedDetections` (None where the entry was None).
    """
    stats = stats if stats is not None else RefineStats()
    outputs: List[Optional[RefinedDetections]] = []
    todo: List[Tuple[int, np.ndarray, np.ndarray]] = []  # (batch index, bool masks, selected indices)
    images: List[np.ndarray] = []
    for i, entry in enumerate(detections):
        stats.images += 1
        if entry is None:
            stats.samples_without_masks += 1
            outputs.append(None)
            continue
        masks = masks_to_bool(entry.masks)
        n = masks.shape[0]
        stats.detections += n
        scores = entry.scores.detach().float().cpu().numpy() if entry.scores is not None else np.full(n, np.nan)
        selected = np.flatnonzero(meets_score_thr(scores, score_thr))
        stats.below_score += n - selected.size
        device = entry.masks.device
        outputs.append(RefinedDetections(
            masks=entry.masks,
            refined=torch.zeros(n, dtype=torch.bool, device=device),
            refine_iou=torch.full((n,), float("nan"), dtype=torch.float32, device=device),
            boxes=entry.boxes,
        ))
        if selected.size == 0:
            continue
        image, source = get_image(i, masks.shape[1:])
        outputs[i].source = source
        stats.image_sources[source] = stats.image_sources.get(source, 0) + 1
        images.append(image)
        todo.append((i, masks, selected))
    if not todo:
        return outputs

    results = refiner.refine_batch(images, [masks[selected] for _, masks, selected in todo])
    for (i, masks, selected), result in zip(todo, results):
        stats.images_refined += 1
        stats.refined += int(result.refined.sum())
        stats.passed_through += int((~result.refined).sum())
        new_masks = masks.copy()
        new_masks[selected] = result.masks
        flags = np.zeros(masks.shape[0], dtype=bool)
        flags[selected] = result.refined
        ious = np.full(masks.shape[0], np.nan, dtype=np.float32)
        ious[selected] = np.where(result.refined, result.iou_predictions, np.nan)
        out = outputs[i]
        old = out.masks
        rows = torch.from_numpy(np.flatnonzero(flags)).to(old.device)
        out.masks = old.clone()
        out.masks[rows] = torch.from_numpy(new_masks[flags]).to(device=old.device, dtype=old.dtype)
        out.refined = torch.from_numpy(flags).to(old.device)
        out.refine_iou = torch.from_numpy(ious).to(old.device)
        if out.boxes is not None:
            out.boxes = updated_boxes(out.boxes, masks, new_masks, flags, boxes_from_refined_masks)
    return outputs
