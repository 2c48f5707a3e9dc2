"""Read instance-segmentation predictions in the formats detectors write, as COCO result dicts.

Every reader returns ``list[dict]`` with ``image_id`` (int), ``category_id`` (the dataset's id),
``score`` (float), ``segmentation`` (compressed RLE with ``counts`` as str; a COCO json's polygons or
uncompressed RLE are passed through for the evaluator to convert) and, when the file has one, ``bbox``
(COCO ``x, y, w, h``).

Formats (chosen by file name):

- ``*.json``: a COCO result list (``pycocotools`` ``loadRes`` input; also MMDetection's
  ``*.segm.json`` from ``CocoMetric(outfile_prefix=...)``), or an annotation file whose annotations carry
  a ``score``.
- ``*.pth``: Detectron2's ``instances_predictions.pth`` (``COCOEvaluator`` / ``LVISEvaluator`` with an
  output dir): ``torch.save`` of ``[{"image_id", "instances": [COCO result dicts]}]`` whose
  ``category_id`` is Detectron2's *contiguous* id ``0..K-1``. It maps back through the dataset's
  category ids in sorted order (Detectron2's ``thing_dataset_id_to_contiguous_id`` for COCO-format
  and LVIS json), so the ground-truth file is required.
- ``*.pkl`` / ``*.pickle``: MMDetection's ``tools/test.py --out`` (``DumpDetResults``): a pickled list
  of ``DetDataSample.to_dict()`` dicts with ``img_id`` and ``pred_instances`` (``scores``, ``labels``,
  ``bboxes`` x1,y1,x2,y2, ``masks`` as RLE dicts or bool ``N x H x W``); ``labels`` index the dataset's
  categories in the annotation file's order (``CocoDataset.cat_ids``), optionally restricted to the
  config's ``classes`` by name. The ground-truth file is required.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from refine_hooks.data.annotations import load_json
from refine_hooks.data.masks import mask_to_xywh, rle_encode, rle_encode_many

GroundTruth = Union[str, Dict[str, Any], Any]  # path, loaded dict, pycocotools COCO or lvis LVIS


def load_predictions(path: str, gt_json: Optional[GroundTruth] = None, *,
                     classes: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Read ``path`` (format from its name, see the module docstring) as COCO result dicts.

    ``gt_json`` (path, dict, ``COCO`` or ``LVIS``) is needed for Detectron2 and MMDetection files to map
    their contiguous labels to category ids; ``classes`` restricts MMDetection's label order to those
    category names (the config's ``metainfo.classes``).
    """
    name = os.path.basename(path).lower()
    if name.endswith(".json"):
        return read_coco_results(path)
    if name.endswith(".pth"):
        return read_detectron2_predictions(path, _require_gt(gt_json, path))
    if name.endswith((".pkl", ".pickle")):
        return read_mmdet_pickle(path, _require_gt(gt_json, path), classes=classes)
    raise ValueError(f"{path}: unknown prediction format (expected .json, Detectron2 .pth or MMDetection .pkl)")


def _require_gt(gt_json: Optional[GroundTruth], path: str) -> Dict[str, Any]:
    if gt_json is None:
        raise ValueError(f"{path}: framework predictions use contiguous labels; pass the ground-truth "
                         "annotation file to map them to category ids")
    if isinstance(gt_json, str):
        return load_json(gt_json)
    if isinstance(gt_json, dict):
        return gt_json
    return gt_json.dataset  # pycocotools COCO or lvis LVIS


def _str_counts(rle: Dict[str, Any]) -> Dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def _result(path: str, where: str, image_id: Any, category_id: Any, score: Any, segmentation: Any,
            bbox: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    if segmentation is None:
        raise ValueError(f"{path}: {where} (image {image_id}) has no mask")
    if isinstance(segmentation, dict) and "counts" in segmentation and not isinstance(segmentation["counts"], list):
        segmentation = _str_counts(segmentation)
    if score is None or isinstance(score, (str, bool)) or not np.isfinite(_number(score)):
        # Unlike refinement (refine_hooks.scores), ranking detections for AP needs every score.
        raise ValueError(f"{path}: {where} (image {image_id}) has score {score!r}; AP needs a finite number")
    try:
        out = {"image_id": int(image_id), "category_id": int(category_id), "score": float(score),
               "segmentation": segmentation}
        if bbox is not None:
            out["bbox"] = [float(v) for v in bbox]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {where} (image {image_id!r}): {exc}") from None
    return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_coco_results(path: str) -> List[Dict[str, Any]]:
    """A COCO result list (or an annotation file whose annotations have ``score``)."""
    data = load_json(path)
    if isinstance(data, dict):
        if "annotations" not in data:
            raise ValueError(f"{path}: a JSON object without 'annotations' is not a result file")
        anns = data["annotations"]
        unscored = [a.get("id") for a in anns if "score" not in a]
        if unscored:
            raise ValueError(f"{path}: an annotation file, and {len(unscored)} annotations have no 'score' "
                             f"(e.g. ids {unscored[:5]}); AP needs scored detections")
        data = anns
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of COCO results, got {type(data).__name__}")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise ValueError(f"{path}: result #{i} is a {type(d).__name__}, not a dict")
        missing = [k for k in ("image_id", "category_id", "score", "segmentation") if k not in d]
        if missing:
            raise ValueError(f"{path}: result #{i} (image {d.get('image_id')}) has no {', '.join(missing)}")
        out.append(_result(path, f"result #{i}", d["image_id"], d["category_id"], d["score"], d["segmentation"],
                           d.get("bbox")))
    return out


def detectron2_category_ids(gt: Dict[str, Any]) -> List[int]:
    """Dataset category id of each Detectron2 contiguous id: the sorted category ids."""
    return sorted(int(c["id"]) for c in gt["categories"])


def read_detectron2_predictions(path: str, gt: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Detectron2's ``instances_predictions.pth`` with contiguous ids mapped back to dataset ids."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Written by a Detectron2 fork that stores other types; the file is the user's own output.
        data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of per-image dicts, got {type(data).__name__}")
    cat_ids = detectron2_category_ids(gt)
    out: List[Dict[str, Any]] = []
    for i, entry in enumerate(data):
        if "instances" not in entry:
            raise ValueError(f"{path}: entry #{i} (image {entry.get('image_id')}) has no 'instances' "
                             "(a proposals-only file?)")
        for j, inst in enumerate(entry["instances"]):
            label = int(inst["category_id"])
            if not 0 <= label < len(cat_ids):
                raise ValueError(f"{path}: image {entry.get('image_id')} instance {j}: contiguous category "
                                 f"{label} outside 0..{len(cat_ids) - 1} of the ground truth's categories")
            out.append(_result(path, f"image entry #{i} instance {j}", inst.get("image_id", entry["image_id"]),
                               cat_ids[label], inst["score"], inst.get("segmentation"), inst.get("bbox")))
    return out


def mmdet_category_ids(gt: Dict[str, Any], classes: Optional[Sequence[str]] = None) -> List[int]:
    """Dataset category id of each MMDetection label: categories in the file's order, restricted to
    ``classes`` by name when given (``CocoDataset.cat_ids = coco.get_cat_ids(cat_names=classes)``)."""
    cats = gt["categories"]
    if classes is None:
        return [int(c["id"]) for c in cats]
    names = {c["name"] for c in cats}
    unknown = [n for n in classes if n not in names]
    if unknown:
        raise ValueError(f"classes {unknown[:10]} are not category names of the ground truth")
    wanted = set(classes)
    return [int(c["id"]) for c in cats if c["name"] in wanted]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_mmdet_pickle(path: str, gt: Dict[str, Any], *, classes: Optional[Sequence[str]] = None
                      ) -> List[Dict[str, Any]]:
    """MMDetection's ``--out`` pickle (``DumpDetResults``) with labels mapped to dataset ids."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{path}: the pickle needs module '{exc.name}'; dump DetDataSample.to_dict() dicts "
                         "(as tools/test.py --out does) or install that framework") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of per-image dicts, got {type(data).__name__}")
    cat_ids = mmdet_category_ids(gt, classes)
    out: List[Dict[str, Any]] = []
    for i, sample in enumerate(data):
        if hasattr(sample, "to_dict"):
            sample = sample.to_dict()
        if "pred_instances" not in sample:
            raise ValueError(f"{path}: sample #{i} (image {sample.get('img_id')}) has no 'pred_instances'")
        image_id = sample.get("img_id")
        pred = sample["pred_instances"]
        if "masks" not in pred:
            raise ValueError(f"{path}: sample #{i} (image {image_id}) has no masks (a detection-only model?)")
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        bboxes = _to_numpy(pred["bboxes"]).reshape(-1, 4) if "bboxes" in pred else None
        masks = pred["masks"]
        if not isinstance(masks, (list, tuple)):
            masks = _to_numpy(masks).astype(bool)
        if not (len(masks) == len(scores) == len(labels)):
            raise ValueError(f"{path}: sample #{i} (image {image_id}): {len(masks)} masks, {len(scores)} scores, "
                             f"{len(labels)} labels")
        for j in range(len(scores)):
            label = int(labels[j])
            if not 0 <= label < len(cat_ids):
                raise ValueError(f"{path}: image {image_id} instance {j}: label {label} outside "
                                 f"0..{len(cat_ids) - 1} of the ground truth's categories")
            mask = masks[j]
            segmentation = mask if isinstance(mask, dict) else rle_encode(np.asarray(mask, dtype=bool))
            bbox = None
            if bboxes is not None:
                x1, y1, x2, y2 = (float(v) for v in bboxes[j])
                bbox = [x1, y1, x2 - x1, y2 - y1]
            elif not isinstance(mask, dict):
                bbox = mask_to_xywh(np.asarray(mask, dtype=bool))
            out.append(_result(path, f"sample #{i} instance {j}", image_id, cat_ids[label], scores[j],
                               segmentation, bbox))
    return out


def masks_to_results(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: Any,
                     category_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """COCO result records of one image's predictions (for the framework adapters' metrics).

    Args:
        masks: bool ``N x H x W``.
        scores: float ``N``.
        labels: int ``N``, the framework's contiguous labels ``0..K-1``.
        category_ids: the dataset category id of each label.

    Returns:
        ``N`` dicts with ``image_id``, ``category_id``, ``score``, ``segmentation`` (RLE, str counts)
        and ``bbox`` (the mask's COCO box).
    """
    records = []
    for j, rle in enumerate(rle_encode_many(masks)):
        label = int(labels[j])
        if not 0 <= label < len(category_ids):
            raise ValueError(f"image {image_id}: predicted label {label} outside 0..{len(category_ids) - 1}, "
                             "the dataset's categories")
        records.append({"image_id": image_id, "category_id": int(category_ids[label]), "score": float(scores[j]),
                        "segmentation": rle, "bbox": mask_to_xywh(masks[j])})
    return records
