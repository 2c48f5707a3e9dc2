"""Mask AP and Boundary AP for COCO and LVIS, agreeing with pycocotools, lvis-api and the official
Boundary IoU API (see docs/evaluation.md).

Library entry points::

    evaluate_coco(gt, predictions, iou_types=("segm", "boundary"), workers=1, max_dets=100) -> EvaluationResult
    evaluate_lvis(gt, predictions, iou_types=("segm", "boundary"), workers=1, max_dets=300) -> EvaluationResult
    mask_to_boundary(mask) / boundary_iou(a, b)            # bool H x W masks
    cocofy_lvis(lvis_json, coco_json=None) -> dict        # COCO categories on LVIS annotations
"""

from refine_hooks.evaluation.boundary import (
    DEFAULT_DILATION_RATIO,
    BoundaryIoUTable,
    boundary_dilation,
    boundary_iou,
    compute_boundaries,
    mask_to_boundary,
    rle_to_boundary,
)
from refine_hooks.evaluation.coco import BoundaryCOCOeval, evaluate_coco
from refine_hooks.evaluation.cocofied import cocofy_lvis
from refine_hooks.evaluation.lvis import BoundaryLVISEval, evaluate_lvis
from refine_hooks.evaluation.results import EvaluationResult, format_comparison

__all__ = [
    "DEFAULT_DILATION_RATIO", "BoundaryIoUTable", "boundary_dilation", "boundary_iou", "compute_boundaries",
    "mask_to_boundary", "rle_to_boundary", "cocofy_lvis", "BoundaryCOCOeval", "evaluate_coco",
    "BoundaryLVISEval", "evaluate_lvis", "EvaluationResult", "format_comparison",
]
