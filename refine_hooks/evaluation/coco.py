"""COCO mask AP and Boundary AP on top of pycocotools' ``COCOeval``.

``segm`` is plain ``COCOeval(iouType="segm")``. ``boundary`` is :class:`BoundaryCOCOeval`, a subclass that
changes only the IoU matrix (``computeIoU``); matching, accumulation and the summary numbers are
pycocotools' own.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from refine_hooks.data.annotations import load_json
from refine_hooks.evaluation.boundary import DEFAULT_DILATION_RATIO, BoundaryIoUTable
from refine_hooks.evaluation.results import (
    IOU_TYPES,
    EvaluationResult,
    ap_by_category,
    boundary_note,
    check_annotation_lists,
    checked_iou_types,
    read_mask_results,
)



def quiet():
    """Silence pycocotools' progress prints (we print our own tables)."""
    return contextlib.redirect_stdout(io.StringIO())


def as_coco(gt: Union[str, Dict[str, Any], COCO]) -> COCO:
    """A ``pycocotools.coco.COCO`` from a path, a loaded annotation dict (not copied) or a COCO object;
    ``ValueError`` when the file or dict is not a ground truth pycocotools can evaluate
    (:func:`check_coco_ground_truth`)."""
    if isinstance(gt, COCO):
        return gt
    coco = COCO()
    if isinstance(gt, (str, os.PathLike)):
        coco.dataset = load_json(gt)
        try:
            check_coco_ground_truth(coco.dataset)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(gt)}: {exc}") from None
    else:
        coco.dataset = gt
        check_coco_ground_truth(coco.dataset)
    with quiet():
        coco.createIndex()
    return coco


def check_coco_ground_truth(dataset: Dict[str, Any]) -> None:
    """What pycocotools needs of a ground truth and would otherwise fail on deep inside (``KeyError``):
    ``images``, ``annotations``, ``categories`` lists and an ``iscrowd`` on every annotation. An LVIS
    file (which has no ``iscrowd``) is named as such."""
    check_annotation_lists(dataset, "a COCO")
    for ann in dataset["annotations"]:
        if "iscrowd" not in ann:
            lvis_like = any("frequency" in c for c in dataset["categories"]) or any(
                "neg_category_ids" in img for img in dataset["images"])
            if lvis_like:
                raise ValueError("an LVIS annotation file (annotations without 'iscrowd', categories with "
                                 "'frequency', images with 'neg_category_ids'): evaluate it with the LVIS rules "
                                 "(--lvis, evaluate_lvis)")
            raise ValueError(f"annotation id {ann.get('id')} (image {ann.get('image_id')}) has no 'iscrowd' "
                             "(0 for an object, 1 for a crowd region)")


def load_results(coco_gt: COCO, results: List[Dict[str, Any]]) -> COCO:
    """``COCO.loadRes`` (which sets each result's ``area`` from its mask and its ``id``), also for an
    empty result list, which ``loadRes`` cannot take."""
    if results:
        with quiet():
            return coco_gt.loadRes(results)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])), "annotations": []}
    with quiet():
        coco_dt.createIndex()
    return coco_dt


class BoundaryCOCOeval(COCOeval):
    """``COCOeval`` for Boundary AP: IoU of a detection with a non-crowd ground truth is
    ``min(mask IoU, boundary IoU)``; with a crowd ground truth it stays pycocotools' crowd mask IoU.

    ``params.iouType`` stays ``"segm"`` because everything else (RLE conversion, area ranges, summary) is
    the segm machinery; only :meth:`computeIoU` differs. Boundaries are computed once per mask, before
    the per-image loop, over ``workers`` processes, and only for pairs that can match (mask IoU at least
    the lowest IoU threshold; see :class:`BoundaryIoUTable`). ``exhaustive=True`` computes every entry of
    ``self.ious`` exactly instead; the AP numbers are the same either way.
    """

    def __init__(self, cocoGt: COCO, cocoDt: COCO, *, dilation_ratio: float = DEFAULT_DILATION_RATIO,
                 workers: int = 1, progress: bool = True,
                 boundary_cache: Optional[Dict[Any, Dict[str, Any]]] = None, exhaustive: bool = False):
        super().__init__(cocoGt, cocoDt, iouType="segm")
        self.dilation_ratio = dilation_ratio
        self.exhaustive = exhaustive
        self.table = BoundaryIoUTable(dilation_ratio, workers=workers, progress=progress, gt_cache=boundary_cache)

    def _selected(self, imgId: int, catId: int) -> Tuple[List[dict], List[dict]]:
        """Ground truths and the kept detections (score order, first ``maxDets[-1]``) exactly as
        ``COCOeval.computeIoU`` selects them."""
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        return gt, [dt[i] for i in order][: p.maxDets[-1]]

    def _prepare(self) -> None:
        super()._prepare()
        p = self.params
        self.table.min_iou = 0.0 if self.exhaustive else float(min(p.iouThrs))
        if p.useCats:
            groups = sorted(k for k in self._gts if k in self._dts and self._gts[k] and self._dts[k])
        else:
            groups = [(i, -1) for i in p.imgIds]
        for imgId, catId in groups:
            gt, dt = self._selected(imgId, catId)
            if gt and dt:
                self.table.add((imgId, catId), dt, gt, [int(g["iscrowd"]) for g in gt])
        self.table.compute()

    def computeIoU(self, imgId: int, catId: int):
        if (imgId, catId) in self.table:
            return self.table.ious((imgId, catId))
        return super().computeIoU(imgId, catId)  # no GT or no detection: pycocotools' empty result


def summarize_coco(E: COCOeval) -> Tuple[Dict[str, float], str]:
    """The 12 standard numbers and pycocotools' summary table, using ``maxDets[-1]`` where pycocotools
    hard-codes 100 (identical output with the default ``maxDets=[1, 10, 100]``)."""
    p = E.params
    mx = p.maxDets[-1]
    rows = [
        ("AP", 1, None, "all", mx), ("AP50", 1, 0.5, "all", mx), ("AP75", 1, 0.75, "all", mx),
        ("APs", 1, None, "small", mx), ("APm", 1, None, "medium", mx), ("APl", 1, None, "large", mx),
        *[(f"AR{m}", 0, None, "all", m) for m in p.maxDets],
        ("ARs", 0, None, "small", mx), ("ARm", 0, None, "medium", mx), ("ARl", 0, None, "large", mx),
    ]
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    stats: Dict[str, float] = {}
    lines = []
    for name, ap, thr, area, max_dets in rows:
        a = [i for i, lbl in enumerate(p.areaRngLbl) if lbl == area]
        m = [i for i, d in enumerate(p.maxDets) if d == max_dets]
        s = E.eval["precision"] if ap else E.eval["recall"]
        if thr is not None:
            s = s[np.where(thr == p.iouThrs)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        value = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
        stats[name] = value
        iou = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
        lines.append(line.format("Average Precision" if ap else "Average Recall", "(AP)" if ap else "(AR)",
                                 iou, area, max_dets, value))
    return stats, "\n".join(lines)


def per_category_ap(E: COCOeval) -> Dict[str, float]:
    """AP@[.5:.95] per category name (area all, largest maxDets); -1 where the category has no GT."""
    return ap_by_category(E.eval["precision"][:, :, :, 0, -1], E.params.catIds, E.cocoGt.dataset.get("categories", []))


def evaluate_coco(
    gt: Union[str, Dict[str, Any], COCO],
    predictions: Union[str, Sequence[Dict[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    workers: int = 1,
    max_dets: int = 100,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    img_ids: Optional[Sequence[int]] = None,
    progress: bool = True,
    boundary_cache: Optional[Dict[Any, Dict[str, Any]]] = None,
    exhaustive: bool = False,
) -> EvaluationResult:
    """COCO mask AP (``segm``) and Boundary AP (``boundary``).

    Args:
        gt: COCO annotation file path, loaded dict, or ``pycocotools.coco.COCO``.
        predictions: COCO result list (dicts with ``image_id``, ``category_id``, ``score``,
            ``segmentation``) or a path any :func:`refine_hooks.data.predictions.load_predictions` reads.
            Boxes are dropped, so area ranges (small/medium/large) use mask area.
        iou_types: any of ``"segm"``, ``"boundary"``.
        workers: processes for boundary computation.
        max_dets: detections per image kept (pycocotools' ``maxDets = [1, 10, max_dets]``; AR is reported
            at each, e.g. ``AR1 AR10 AR100``).
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        img_ids: evaluate only these images (default: all images of ``gt``).
        boundary_cache: dict reused between calls with the same ``gt`` object to compute GT boundaries once.
        exhaustive: compute the boundary IoU of every overlapping pair, not only of pairs that can match
            (same AP; for checks and worst-case timing).

    Returns:
        :class:`EvaluationResult`: ``{"segm/AP": 0.41, ..., "boundary/AP": ...}`` (pycocotools' scale,
        -1 where a bucket has no ground truth), with ``.tables``, ``.per_category``, ``.notes``, ``.timings``.
    """
    iou_types = checked_iou_types(iou_types, max_dets)
    coco_gt = as_coco(gt)
    results, notes = read_mask_results(predictions, coco_gt, coco_gt.imgs, coco_gt.cats)
    coco_dt = load_results(coco_gt, results)
    out = EvaluationResult(notes=notes)
    for iou_type in iou_types:
        start = time.perf_counter()
        if iou_type == "segm":
            E = COCOeval(coco_gt, coco_dt, iouType="segm")
        else:
            E = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio=dilation_ratio, workers=workers,
                                 progress=progress, boundary_cache=boundary_cache,
                                 exhaustive=exhaustive)
        E.params.maxDets = [d for d in (1, 10) if d < max_dets] + [max_dets]
        if img_ids is not None:
            E.params.imgIds = sorted(img_ids)
        if progress:
            print(f"[{iou_type}] matching {len(coco_dt.anns)} detections on {len(E.params.imgIds)} images "
                  "(pycocotools evaluate + accumulate) ...", file=sys.stderr, flush=True)
        with quiet():
            E.evaluate()
            E.accumulate()
        stats, table = summarize_coco(E)
        out.add(iou_type, stats, table, per_category_ap(E), time.perf_counter() - start)
        if iou_type == "boundary":
            out.notes.append(boundary_note(E.table))
    return out
