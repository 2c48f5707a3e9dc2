"""LVIS mask AP and Boundary AP on top of the ``lvis`` package's ``LVISEval`` (federated rules, APr/APc/APf,
300 detections per image by default).

NumPy 2 compatibility: lvis 0.5.3's ``LVISEval.accumulate`` calls ``np.float``, removed in NumPy 2.0.
Rather than pin an old NumPy or patch NumPy globally, :func:`_numpy_compat` gives ``lvis.eval`` its own
``np``: a module that forwards every attribute to the real NumPy and answers ``float`` with the builtin
``float`` (what ``np.float`` always was). Nothing outside ``lvis.eval`` sees a difference.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import time
import types
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

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


class _NumpyWithFloat(types.ModuleType):
    """NumPy as lvis 0.5.3 expects it: ``np.float`` is the builtin ``float``."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _numpy_compat() -> None:
    import lvis.eval

    if not hasattr(np, "float") and not isinstance(lvis.eval.np, _NumpyWithFloat):
        lvis.eval.np = _NumpyWithFloat("numpy")


_numpy_compat()

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402  (after the shim, on purpose)

LVIS_MAX_DETS = 300


def as_lvis(gt: Union[str, Dict[str, Any], LVIS]) -> LVIS:
    """An ``lvis.LVIS`` from a path, a loaded annotation dict (not copied) or an ``LVIS`` object."""
    if isinstance(gt, LVIS):
        return gt
    if isinstance(gt, str):
        gt = load_json(gt)
    check_annotation_lists(gt, "an LVIS")
    for img in gt["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in img:
                raise ValueError(f"image {img.get('id')} has no '{key}': not an LVIS-style annotation file "
                                 "(use evaluate_coco, or cocofy_lvis for COCO categories on LVIS)")
    missing = [c["id"] for c in gt["categories"] if "frequency" not in c]
    if missing:
        raise ValueError(f"categories {missing[:10]} have no 'frequency' (r/c/f), needed for APr/APc/APf")
    obj = LVIS.__new__(LVIS)
    obj.logger = logging.getLogger("lvis.lvis")
    obj.dataset = gt
    obj._create_index()
    return obj


def load_lvis_results(lvis_gt: LVIS, results: List[Dict[str, Any]], max_dets: int) -> LVISResults:
    """``LVISResults`` (top ``max_dets`` per image, ``area`` from the mask), also for an empty list."""
    if results:
        return LVISResults(lvis_gt, results, max_dets=max_dets)
    obj = LVISResults.__new__(LVISResults)
    obj.logger = logging.getLogger("lvis.results")
    obj.dataset = copy.deepcopy(lvis_gt.dataset)
    obj.dataset["annotations"] = []
    obj._create_index()
    return obj


class BoundaryLVISEval(LVISEval):
    """``LVISEval`` for Boundary AP: the IoU of a detection and a ground truth is
    ``min(mask IoU, boundary IoU)`` (LVIS has no crowd annotations). Only :meth:`compute_iou` changes;
    the federated filtering, matching and accumulation are lvis-api's. ``params.iou_type`` stays
    ``"segm"`` for that machinery. Boundaries are computed only for pairs that can match (see
    :class:`BoundaryCOCOeval`; ``exhaustive=True`` computes all).
    """

    def __init__(self, lvis_gt: LVIS, lvis_dt: LVISResults, *, dilation_ratio: float = DEFAULT_DILATION_RATIO,
                 workers: int = 1, progress: bool = True,
                 boundary_cache: Optional[Dict[Any, Dict[str, Any]]] = None, exhaustive: bool = False):
        super().__init__(lvis_gt, lvis_dt, iou_type="segm")
        self.dilation_ratio = dilation_ratio
        self.exhaustive = exhaustive
        self.table = BoundaryIoUTable(dilation_ratio, workers=workers, progress=progress, gt_cache=boundary_cache)

    def _prepare(self) -> None:
        super()._prepare()
        if not self.params.use_cats:
            raise NotImplementedError("Boundary AP for LVIS is defined with use_cats=1 only")
        self.table.min_iou = 0.0 if self.exhaustive else float(min(self.params.iou_thrs))
        for key in sorted(k for k in self._gts if k in self._dts and self._gts[k] and self._dts[k]):
            gt, dt = self._gt_dt_sorted(*key)
            self.table.add(key, dt, gt, [0] * len(gt))
        self.table.compute()

    def _gt_dt_sorted(self, img_id: int, cat_id: int):
        gt, dt = self._get_gt_dt(img_id, cat_id)
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")  # as LVISEval.compute_iou
        return gt, [dt[i] for i in order]

    def compute_iou(self, img_id: int, cat_id: int):
        if (img_id, cat_id) in self.table:
            return self.table.ious((img_id, cat_id))
        return super().compute_iou(img_id, cat_id)


def _lvis_table(E: LVISEval) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        E.print_results()
    return buffer.getvalue().rstrip("\n")


def _per_category(E: LVISEval) -> Dict[str, float]:
    return ap_by_category(E.eval["precision"][:, :, :, 0], E.params.cat_ids, E.lvis_gt.dataset["categories"])


def evaluate_lvis(
    gt: Union[str, Dict[str, Any], LVIS],
    predictions: Union[str, Sequence[Dict[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    *,
    workers: int = 1,
    max_dets: int = LVIS_MAX_DETS,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    progress: bool = True,
    boundary_cache: Optional[Dict[Any, Dict[str, Any]]] = None,
    exhaustive: bool = False,
) -> EvaluationResult:
    """LVIS mask AP and Boundary AP with lvis-api's federated rules.

    A detection of a category that is neither annotated in its image nor in the image's
    ``neg_category_ids`` is not evaluated; unmatched detections of categories in
    ``not_exhaustive_category_ids`` are not false positives. Arguments as :func:`evaluate_coco`
    (``gt`` must carry LVIS fields); metrics ``"<type>/AP"``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``,
    ``APr``, ``APc``, ``APf``, ``AR@<max_dets>``, ``ARs@..``, ``ARm@..``, ``ARl@..``.
    """
    iou_types = checked_iou_types(iou_types, max_dets)
    lvis_gt = as_lvis(gt)
    results, notes = read_mask_results(predictions, lvis_gt.dataset, lvis_gt.imgs, lvis_gt.cats)
    out = EvaluationResult(notes=notes)
    # One LVISResults (it deep-copies the whole ground-truth dataset) serves both IoU types: evaluation
    # only reads the detections.
    lvis_dt = load_lvis_results(lvis_gt, results, max_dets)
    for iou_type in iou_types:
        start = time.perf_counter()
        if iou_type == "segm":
            E = LVISEval(lvis_gt, lvis_dt, iou_type="segm")
        else:
            E = BoundaryLVISEval(lvis_gt, lvis_dt, dilation_ratio=dilation_ratio, workers=workers,
                                 progress=progress, boundary_cache=boundary_cache,
                                 exhaustive=exhaustive)
        E.params.max_dets = max_dets
        if progress:
            print(f"[{iou_type}] matching {len(lvis_dt.anns)} detections on {len(E.params.img_ids)} images "
                  "(lvis-api evaluate + accumulate) ...", file=sys.stderr, flush=True)
        E.run()
        out.add(iou_type, {k: float(v) for k, v in E.results.items()}, _lvis_table(E), _per_category(E),
                time.perf_counter() - start)
        if iou_type == "boundary":
            out.notes.append(boundary_note(E.table))
    return out
