"""Checking prediction lists before evaluation, and the result object evaluators return."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from refine_hooks.data.masks import segmentation_to_rle

IOU_TYPES = ("segm", "boundary")

BOX_NOTE = ("boxes dropped from the predictions: for segm and boundary the area ranges (small/medium/large) "
            "use each detection's mask area, not its box area")

TITLES = {"segm": "Mask AP (segm)", "boundary": "Boundary AP (boundary)"}


def check_annotation_lists(data: Any, kind: str = "a COCO") -> None:
    """``ValueError`` unless ``data`` is a JSON object with ``images``, ``annotations`` and ``categories``
    lists, as every annotation file is (``kind``: "a COCO", "an LVIS", for the message), whose annotations
    each have their own ``id``: pycocotools and lvis index annotations by id, so of two annotations with
    one id the later would be evaluated twice and the earlier not at all."""
    if not isinstance(data, dict):
        raise ValueError(f"{kind} annotation file is a JSON object, not a {type(data).__name__}"
                         + (" (a result list?)" if isinstance(data, list) else ""))
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"no '{key}' list: not {kind} annotation file")
    seen = set()
    for position, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if ann_id is None or isinstance(ann_id, (list, dict)):
            raise ValueError(f"annotations[{position}] has no 'id' (or not a number): pycocotools and lvis index a "
                             "ground truth's annotations by id")
        if ann_id in seen:
            first = next(k for k, other in enumerate(data["annotations"]) if other.get("id") == ann_id)
            raise ValueError(f"annotations[{first}] and annotations[{position}] have the same id {ann_id!r}: "
                             "pycocotools and lvis index annotations by id, so one would be evaluated twice and "
                             "the other not at all")
        seen.add(ann_id)


def prepare_mask_results(predictions: Sequence[Dict[str, Any]], imgs: Mapping[int, Dict[str, Any]],
                         cats: Mapping[int, Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Copy COCO result dicts into what mask evaluation wants: ``image_id``, ``category_id``, ``score``
    and a compressed RLE ``segmentation`` at the image's size (polygons and uncompressed RLE are
    converted). Boxes are dropped so pycocotools/lvis use mask area for the area ranges.

    Raises ``ValueError`` naming the offending entries: unknown image or category ids, missing fields,
    segmentations that do not match their image size. Nothing is skipped silently.
    """
    out: List[Dict[str, Any]] = []
    unknown_images: Dict[Any, int] = {}
    unknown_cats: Dict[Any, int] = {}
    n_boxes = 0
    for i, pred in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "score", "segmentation") if k not in pred]
        if missing:
            raise ValueError(f"prediction #{i} (image {pred.get('image_id')}) has no {', '.join(missing)}")
        img = imgs.get(pred["image_id"])
        if img is None:
            unknown_images[pred["image_id"]] = unknown_images.get(pred["image_id"], 0) + 1
            continue
        if pred["category_id"] not in cats:
            unknown_cats[pred["category_id"]] = unknown_cats.get(pred["category_id"], 0) + 1
            continue
        try:
            rle = segmentation_to_rle(pred["segmentation"], int(img["height"]), int(img["width"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"prediction #{i} (image {pred['image_id']}, file {img.get('file_name')}): "
                             f"bad segmentation: {exc}") from exc
        n_boxes += "bbox" in pred
        out.append({"image_id": pred["image_id"], "category_id": pred["category_id"],
                    "score": float(pred["score"]), "segmentation": rle})
    if unknown_images:
        raise ValueError(f"{sum(unknown_images.values())} predictions name images that are not in the ground "
                         f"truth, e.g. image ids {_some(unknown_images)}")
    if unknown_cats:
        raise ValueError(f"{sum(unknown_cats.values())} predictions name categories that are not in the ground "
                         f"truth: category ids {_some(unknown_cats)} (contiguous 0..K-1 labels from a framework? "
                         "read the file with refine_hooks.data.predictions.load_predictions and the GT file)")
    notes = [BOX_NOTE + (f" ({n_boxes} of {len(out)} predictions had a box)" if n_boxes else "")]
    return out, notes


def read_mask_results(predictions: Union[str, Sequence[Dict[str, Any]]], gt: Any, imgs: Mapping[int, Dict[str, Any]],
                      cats: Mapping[int, Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """:func:`prepare_mask_results` of a result list, or of a prediction file in any format
    :func:`refine_hooks.data.predictions.load_predictions` reads (``gt`` maps framework labels)."""
    if isinstance(predictions, str):
        from refine_hooks.data.predictions import load_predictions

        predictions = load_predictions(predictions, gt)
    return prepare_mask_results(predictions, imgs, cats)


def boundary_note(table: Any) -> str:
    """What the boundary evaluation computed (a :class:`BoundaryIoUTable`), for the printed notes."""
    which = (f"only masks in a pair with mask IoU >= {table.min_iou:g} need one: any other pair stays below "
             "every IoU threshold" if table.min_iou > 0 else
             "exhaustive: every mask overlapping a partner; pairs that do not overlap have IoU 0")
    return (f"boundary: dilation ratio {table.dilation_ratio}; {table.n_computed} boundary bands computed for "
            f"the {table.n_masks} masks of image/category groups with both detections and ground truth ({which})")


def _some(counts: Dict[Any, int], n: int = 10) -> str:
    keys = sorted(counts, key=str)
    return ", ".join(map(str, keys[:n])) + (f" and {len(keys) - n} more" if len(keys) > n else "")


class EvaluationResult(dict):
    """Flat ``{"<iou_type>/<metric>": float}`` (e.g. ``"segm/AP"``, ``"boundary/APr"``), values on
    pycocotools' 0..1 scale with -1 where a bucket has no ground truth; plus

    - ``tables``: ``{iou_type: summary table as pycocotools / lvis print it}``
    - ``per_category``: ``{iou_type: {category name: AP}}``
    - ``notes``: what the evaluation did that a reader should know (boxes dropped, boundaries computed)
    - ``timings``: ``{iou_type: seconds}``
    """

    def __init__(self, notes: Optional[Iterable[str]] = None):
        super().__init__()
        self.tables: Dict[str, str] = {}
        self.per_category: Dict[str, Dict[str, float]] = {}
        self.notes: List[str] = list(notes or [])
        self.timings: Dict[str, float] = {}

    def add(self, iou_type: str, stats: Mapping[str, float], table: str,
            per_category: Mapping[str, float], seconds: float) -> None:
        for name, value in stats.items():
            self[f"{iou_type}/{name}"] = float(value)
        self.tables[iou_type] = table
        self.per_category[iou_type] = dict(per_category)
        self.timings[iou_type] = seconds

    def format(self) -> str:
        """The standard tables, one per IoU type, followed by the notes."""
        parts = [f"{TITLES.get(t, t)}\n{table}" for t, table in self.tables.items()]
        parts += [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def to_json(self) -> Dict[str, Any]:
        return {"metrics": dict(self), "tables": self.tables, "per_category": self.per_category,
                "notes": self.notes, "timings_s": self.timings}


def format_comparison(a: Mapping[str, float], b: Mapping[str, float], names: Tuple[str, str] = ("A", "B")) -> str:
    """Side-by-side table of two metric dicts with ``B - A`` deltas, in points (x100)."""
    keys = [k for k in a if k in b] + [k for k in b if k not in a]
    width = max([len(k) for k in keys] + [6])
    header = f"{'metric':<{width}}  {names[0][:12]:>12}  {names[1][:12]:>12}  {'delta':>7}"
    lines = [header, "-" * len(header)]
    for k in keys:
        va, vb = a.get(k), b.get(k)
        fa = f"{100 * va:12.2f}" if va is not None and va >= 0 else f"{'n/a':>12}"
        fb = f"{100 * vb:12.2f}" if vb is not None and vb >= 0 else f"{'n/a':>12}"
        delta = f"{100 * (vb - va):+7.2f}" if va is not None and vb is not None and va >= 0 and vb >= 0 else f"{'':>7}"
        lines.append(f"{k:<{width}}  {fa}  {fb}  {delta}")
    return "\n".join(lines)


def ap_by_category(precision: np.ndarray, cat_ids: Sequence[int], categories: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """AP averaged over IoU thresholds and recall points, per category name.

    Args:
        precision: float ``T x R x K`` slice of an evaluator's ``eval["precision"]`` (one area range and
            max-detections setting), -1 where undefined.
        cat_ids: the K category ids in the evaluator's order; ``categories``: the dataset's entries.

    Returns:
        category name -> AP, -1 where the category has no ground truth.
    """
    names = {c["id"]: c.get("name", str(c["id"])) for c in categories}
    out = {}
    for k, cat_id in enumerate(cat_ids):
        values = precision[:, :, k]
        out[names.get(cat_id, str(cat_id))] = float(np.mean(values[values > -1])) if (values > -1).any() else -1.0
    return out


def checked_iou_types(iou_types, max_dets: int) -> List[str]:
    """The evaluators' common argument checks: ``iou_types`` as a list of supported names."""
    iou_types = [iou_types] if isinstance(iou_types, str) else list(iou_types)
    if max_dets < 1:
        raise ValueError(f"max_dets must be at least 1, got {max_dets}")
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"unsupported iou type(s) {unknown}; choose from {IOU_TYPES}")
    return iou_types
