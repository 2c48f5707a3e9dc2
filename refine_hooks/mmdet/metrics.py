"""``CocoBoundaryMetric`` and ``LVISBoundaryMetric``: mask AP and Boundary AP from
:mod:`refine_hooks.evaluation`, reported under mmdet's usual keys, usable as ``val_evaluator`` /
``test_evaluator``.

Keys (with the default prefixes): ``coco/segm_mAP``, ``coco/segm_mAP_50``, ``_75``, ``_s``, ``_m``, ``_l``
and the same for ``coco/boundary_*`` (as mmdet's ``CocoMetric``); ``lvis/segm_AP``, ``_AP50``, ``_AP75``,
``_APs``, ``_APm``, ``_APl``, ``_APr``, ``_APc``, ``_APf`` and ``lvis/boundary_*`` (as mmdet's
``LVISMetric``). Values are not rounded (mmdet rounds to 3 decimals), so they equal what
``tools/evaluate.py`` prints for the same predictions.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmdet.registry import METRICS

from refine_hooks.data.predictions import masks_to_results, mmdet_category_ids
from refine_hooks.evaluation import evaluate_coco, evaluate_lvis
from refine_hooks.evaluation.boundary import DEFAULT_DILATION_RATIO

from .predictions import masks_to_bool

COCO_KEYS = {"AP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l"}
LVIS_KEYS = {k: k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}


def sample_to_results(sample: Dict[str, Any], cat_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """COCO result records (RLE with str counts, xywh box of the mask) of one data sample as the
    evaluator hands it to metrics (``DetDataSample.to_dict()``)."""
    pred = sample.get("pred_instances", {})
    if "masks" not in pred:
        raise ValueError(f"image {sample.get('img_id')} ({sample.get('img_path')}): the prediction has no "
                         "pred_instances.masks; mask and boundary AP need an instance segmentation model")
    masks = masks_to_bool(pred["masks"])
    scores = pred["scores"].detach().float().cpu().numpy()
    labels = pred["labels"].detach().cpu().numpy()
    return masks_to_results(masks, scores, labels, int(sample["img_id"]), cat_ids)


class _BoundaryMetric(BaseMetric):
    """Shared by the COCO and LVIS metrics: collect RLE results, evaluate them with the core."""

    keys: Dict[str, str] = {}
    protocol = ""

    def __init__(
        self,
        ann_file: str,
        iou_types: Sequence[str] = ("segm", "boundary"),
        max_dets: Optional[int] = None,
        dilation_ratio: float = DEFAULT_DILATION_RATIO,
        workers: int = 1,
        outfile_prefix: Optional[str] = None,
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
    ):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"{type(self).__name__}: annotation file {ann_file} does not exist")
        self.ann_file = ann_file
        self.iou_types = tuple(iou_types)
        self.max_dets = max_dets
        self.dilation_ratio = dilation_ratio
        self.workers = workers
        self.outfile_prefix = outfile_prefix
        with open(ann_file) as f:
            self._gt_json = json.load(f)
        self._boundary_cache: Dict[Any, Dict[str, Any]] = {}  # GT boundaries, reused across evaluations
        self._cat_ids: Optional[List[int]] = None

    @property
    def cat_ids(self) -> List[int]:
        """Category id of each label, as mmdet's datasets number them (file order, restricted to the
        dataset's ``classes``)."""
        if self._cat_ids is None:
            classes = (self.dataset_meta or {}).get("classes")
            self._cat_ids = mmdet_category_ids(self._gt_json, classes)
        return self._cat_ids

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(sample_to_results(sample, self.cat_ids))

    def _evaluate(self, predictions: List[Dict[str, Any]]):
        raise NotImplementedError

    def compute_metrics(self, results: list) -> Dict[str, float]:
        predictions = [record for per_image in results for record in per_image]
        if self.outfile_prefix is not None:
            path = f"{self.outfile_prefix}.segm.json"
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(predictions, f)
            print_log(f"{type(self).__name__}: predictions written to {path}", logger="current")
        evaluation = self._evaluate(predictions)
        print_log(f"{type(self).__name__} on {self.ann_file}:\n{evaluation.format()}", logger="current")
        metrics = {}
        for iou_type in self.iou_types:
            for name, key in self.keys.items():
                metrics[f"{iou_type}_{key}"] = evaluation[f"{iou_type}/{name}"]
        return metrics


@METRICS.register_module()
class CocoBoundaryMetric(_BoundaryMetric):
    """COCO mask AP and Boundary AP (:func:`refine_hooks.evaluation.evaluate_coco`).

    Args:
        ann_file: COCO annotation file of the evaluated set.
        iou_types: any of ``"segm"``, ``"boundary"``.
        max_dets: detections per image (default 100).
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        workers: processes computing boundaries.
        outfile_prefix: also write the predictions to ``<prefix>.segm.json`` (a COCO result list).
        collect_device, prefix: as mmengine's ``BaseMetric``.
    """

    default_prefix = "coco"
    keys = COCO_KEYS

    def _evaluate(self, predictions):
        return evaluate_coco(self._gt_json, predictions, self.iou_types, workers=self.workers,
                             max_dets=self.max_dets or 100, dilation_ratio=self.dilation_ratio,
                             progress=False, boundary_cache=self._boundary_cache)


@METRICS.register_module()
class LVISBoundaryMetric(_BoundaryMetric):
    """LVIS (federated) mask AP and Boundary AP (:func:`refine_hooks.evaluation.evaluate_lvis`);
    arguments as :class:`CocoBoundaryMetric`, ``max_dets`` defaults to 300."""

    default_prefix = "lvis"
    keys = LVIS_KEYS

    def _evaluate(self, predictions):
        return evaluate_lvis(self._gt_json, predictions, self.iou_types, workers=self.workers,
                             max_dets=self.max_dets or 300, dilation_ratio=self.dilation_ratio,
                             progress=False, boundary_cache=self._boundary_cache)
