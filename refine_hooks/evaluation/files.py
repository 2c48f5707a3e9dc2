"""Evaluate prediction files against an annotation file, optionally two side by side (``tools/evaluate.py``)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

from refine_hooks.data.annotations import load_json
from refine_hooks.data.predictions import load_predictions
from refine_hooks.evaluation.boundary import DEFAULT_DILATION_RATIO
from refine_hooks.evaluation.coco import as_coco, evaluate_coco
from refine_hooks.evaluation.lvis import LVIS_MAX_DETS, as_lvis, evaluate_lvis
from refine_hooks.evaluation.results import EvaluationResult, format_comparison


def evaluate_files(
    gt_path: str,
    dt_path: str,
    *,
    compare_path: Optional[str] = None,
    iou_types: Sequence[str] = ("segm", "boundary"),
    lvis: bool = False,
    max_dets: Optional[int] = None,
    workers: int = 1,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    classes: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> Tuple[Dict[str, Any], str]:
    """Evaluate ``dt_path`` (and ``compare_path``) on ``gt_path``.

    Raises ``ValueError`` naming the file when a file is not what it should be: malformed JSON, a
    result list given as ground truth, a ground truth without annotations (no AP can be computed), an
    LVIS ground truth without ``lvis=True``, annotations without ``iscrowd``.

    Returns ``(summary, text)``: ``summary`` is JSON-ready (settings, per-file metrics, tables, notes and,
    when comparing, ``delta = compare - dt`` per metric); ``text`` is what the tool prints. The ground
    truth is loaded once and its boundaries are computed once for both files.
    """
    gt_json = load_json(gt_path)
    try:
        gt = as_lvis(gt_json) if lvis else as_coco(gt_json)
    except ValueError as exc:
        raise ValueError(f"{gt_path}: {exc}") from None
    if not gt_json["annotations"]:
        raise ValueError(f"{gt_path} has no annotations: there is nothing to match predictions against "
                         "(every AP would be -1)")
    max_dets = (LVIS_MAX_DETS if lvis else 100) if max_dets is None else max_dets
    cache: Dict[Any, Dict[str, Any]] = {}  # ground-truth boundaries, shared by both files
    evaluate = evaluate_lvis if lvis else evaluate_coco

    def run(path: str) -> EvaluationResult:
        predictions = load_predictions(path, gt_json, classes=classes)
        try:
            return evaluate(gt, predictions, iou_types, workers=workers, max_dets=max_dets,
                            dilation_ratio=dilation_ratio, progress=progress, boundary_cache=cache)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    settings = {"gt": os.path.abspath(gt_path), "protocol": "lvis" if lvis else "coco", "iou_types": list(iou_types),
                "max_dets": max_dets, "dilation_ratio": dilation_ratio, "workers": workers}
    first = run(dt_path)
    summary: Dict[str, Any] = {"settings": settings, "predictions": {os.path.abspath(dt_path): first.to_json()}}
    text = [f"== {dt_path}", first.format()]
    if compare_path is not None:
        second = run(compare_path)
        summary["predictions"][os.path.abspath(compare_path)] = second.to_json()
        summary["delta"] = {k: second[k] - first[k] for k in first if k in second and first[k] >= 0 and second[k] >= 0}
        names = (os.path.basename(dt_path), os.path.basename(compare_path))
        text += [f"== {compare_path}", second.format(),
                 f"== {names[0]} vs {names[1]} (x100, delta = second - first)", format_comparison(first, second, names)]
    return summary, "\n\n".join(text)
