"""Refine the ``pred_instances`` of mmdet ``DetDataSample`` s in place: the one routine behind
:class:`~refine_hooks.mmdet.MaskRefinementHook` and :class:`~refine_hooks.mmdet.RefinedDetector`.

The work is :func:`refine_hooks.refiners.detections.refine_detections`; this module only unpacks
``pred_instances`` and writes the result back.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

from refine_hooks.refiners import detections as core
from refine_hooks.refiners.base import Refiner
from refine_hooks.refiners.detections import ImageGetter, masks_to_bool  # noqa: F401 (re-exported)

from .images import SOURCE_INPUTS, SOURCE_PATH

SOURCE_LABELS = {SOURCE_PATH: "read from img_path", SOURCE_INPUTS: "reconstructed from the batch inputs"}


@dataclasses.dataclass
class RefineStats(core.RefineStats):
    """:class:`refine_hooks.refiners.detections.RefineStats` counting mmdet's two image sources."""

    image_sources: Dict[str, int] = dataclasses.field(default_factory=lambda: {SOURCE_PATH: 0, SOURCE_INPUTS: 0})
    source_labels: Dict[str, str] = dataclasses.field(default_factory=lambda: dict(SOURCE_LABELS))


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
    Boxes follow :func:`refine_hooks.refiners.detections.updated_boxes` (empty boxes, as SOLOv2 returns,
    always become their mask's box). Each sample's metainfo gets ``refine_image_source`` (``img_path`` or
    ``inputs``) when something was refined.

    Args:
        refiner: any :class:`~refine_hooks.refiners.Refiner`.
        data_samples: ``DetDataSample`` s as ``model.predict`` / ``test_step`` return them.
        get_image: ``get_image(i, (H, W)) -> (uint8 RGB H x W x 3, source)`` for sample ``i``.
        stats: counts to add to (a new :class:`RefineStats` when None).
    """
    stats = stats if stats is not None else RefineStats()
    batch = []
    for sample in data_samples:
        instances = sample.get("pred_instances") if hasattr(sample, "get") else None
        if instances is None or "masks" not in instances:
            batch.append(None)
            continue
        batch.append(core.Detections(
            masks=instances.masks,
            scores=instances.scores if "scores" in instances else None,
            boxes=instances.bboxes if "bboxes" in instances else None,
        ))
    refined = core.refine_detections(refiner, batch, get_image, score_thr=score_thr,
                                     boxes_from_refined_masks=boxes_from_refined_masks, stats=stats)
    for sample, entry, result in zip(data_samples, batch, refined):
        if result is None:
            continue
        instances = sample.pred_instances
        if keep_unrefined:
            instances.unrefined_masks = entry.masks.clone()
        instances.masks = result.masks
        instances.refined = result.refined
        instances.refine_iou = result.refine_iou
        if result.boxes is not None:
            instances.bboxes = result.boxes
        if result.source:
            sample.set_metainfo({"refine_image_source": result.source})
    return stats
