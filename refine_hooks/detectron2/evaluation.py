"""``COCOBoundaryEvaluator`` and ``LVISBoundaryEvaluator``: mask AP and Boundary AP from
:mod:`refine_hooks.evaluation` as Detectron2 ``DatasetEvaluator`` s.

They return what Detectron2's ``COCOEvaluator`` / ``LVISEvaluator`` return for ``segm`` (``{"segm":
{"AP": .., "AP50": .., ..., "AP-<category>": ..}}``, values in percent) plus the same for ``boundary``,
computed by :func:`~refine_hooks.evaluation.evaluate_coco` / :func:`~refine_hooks.evaluation.evaluate_lvis`,
so they equal what ``tools/evaluate.py`` prints for the same predictions.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from refine_hooks.data.predictions import detectron2_category_ids, masks_to_results
from refine_hooks.evaluation import evaluate_coco, evaluate_lvis
from refine_hooks.evaluation.boundary import DEFAULT_DILATION_RATIO
from refine_hooks.evaluation.results import EvaluationResult
from refine_hooks.refiners.detections import masks_to_bool

logger = logging.getLogger(__name__)

RESULTS_FILE = "refine_hooks_segm_results.json"


def instances_to_results(instances: Any, image_id: Any, category_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """COCO result records (RLE with str counts, xywh box of the mask) of one image's ``Instances``.

    Args:
        instances: Detectron2 ``Instances`` with ``pred_masks`` (bool or float 0/1 ``N x H x W``),
            ``scores`` and ``pred_classes`` (contiguous ids).
        category_ids: dataset category id of each contiguous id.
    """
    if not instances.has("pred_masks"):
        raise ValueError(f"image {image_id}: the prediction has no pred_masks; mask and boundary AP need an "
                         "instance segmentation model")
    masks = masks_to_bool(instances.pred_masks)
    scores = instances.scores.detach().float().cpu().numpy()
    classes = instances.pred_classes.detach().cpu().numpy()
    return masks_to_results(masks, scores, classes, image_id, category_ids)


def dataset_category_ids(dataset_name: str, gt: Dict[str, Any], *, lvis: bool = False) -> List[int]:
    """Dataset category id of each Detectron2 contiguous id of a registered dataset.

    From the metadata's ``thing_dataset_id_to_contiguous_id``, which Detectron2's COCO loader sets when
    it loads the dataset (loaded here if needed); LVIS loaders number categories ``id - 1`` and set no
    mapping, which the sorted ids of ``gt`` reproduce.
    """
    metadata = MetadataCatalog.get(dataset_name)
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if mapping is None and not lvis and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)
        mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if mapping:
        inverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        return [inverse[i] for i in range(len(inverse))]
    return detectron2_category_ids(gt)


class _BoundaryEvaluator(DatasetEvaluator):
    """Collects COCO result records of every image, gathers them on the main process, evaluates."""

    metric_names: Sequence[str] = ()
    default_max_dets = 100
    loader_sets_mapping = True  # Detectron2's COCO loader sets thing_dataset_id_to_contiguous_id

    def __init__(
        self,
        dataset_name: str,
        iou_types: Sequence[str] = ("segm", "boundary"),
        *,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        max_dets: Optional[int] = None,
        dilation_ratio: float = DEFAULT_DILATION_RATIO,
        workers: int = 1,
    ):
        self.dataset_name = dataset_name
        self.metadata = MetadataCatalog.get(dataset_name)
        json_file = getattr(self.metadata, "json_file", None)
        if not json_file or not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"{type(self).__name__}: dataset {dataset_name!r} has no annotation file in its metadata "
                f"(json_file={json_file!r}); register it with register_coco_instances / register_lvis_instances")
        self.json_file = json_file
        self.iou_types = tuple(iou_types)
        self.output_dir = output_dir
        self.distributed = distributed
        self.max_dets = max_dets or self.default_max_dets
        self.dilation_ratio = dilation_ratio
        self.workers = workers
        self._gt: Optional[Dict[str, Any]] = None
        self._category_ids: Optional[List[int]] = None
        self._boundary_cache: Dict[Any, Dict[str, Any]] = {}  # ground-truth boundaries, reused across evaluations
        self._records: List[Dict[str, Any]] = []

    @property
    def gt(self) -> Dict[str, Any]:
        if self._gt is None:
            with open(self.json_file) as f:
                self._gt = json.load(f)
        return self._gt

    @property
    def category_ids(self) -> List[int]:
        """Dataset category id of each contiguous id, as the dataset loader numbered them."""
        if self._category_ids is None:
            self._category_ids = dataset_category_ids(self.dataset_name, self.gt, lvis=not self.loader_sets_mapping)
        return self._category_ids

    def reset(self) -> None:
        self._records = []

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        for record, output in zip(inputs, outputs):
            if "instances" not in output:
                continue
            self._records.extend(instances_to_results(output["instances"].to("cpu"), record["image_id"],
                                                      self.category_ids))

    def _evaluate(self, records: List[Dict[str, Any]]) -> EvaluationResult:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather(self._records, dst=0)
            if not comm.is_main_process():
                return {}
            records = [record for part in gathered for record in part]
        else:
            records = self._records
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, RESULTS_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump(records, f)
            os.replace(path + ".tmp", path)
            logger.info(f"{type(self).__name__}: predictions written to {path}")
        evaluation = self._evaluate(records)
        logger.info(f"{type(self).__name__} on {self.json_file}:\n{evaluation.format()}")
        return to_detectron2_results(evaluation, self.iou_types, self.metric_names)


def to_detectron2_results(evaluation: EvaluationResult, iou_types: Sequence[str],
                          metric_names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """``{iou_type: {"AP": .., ..., "AP-<category>": ..}}`` in percent, as Detectron2's evaluators report
    (NaN where a bucket has no ground truth, as they do)."""
    results: Dict[str, Dict[str, float]] = OrderedDict()
    for iou_type in iou_types:
        values = {}
        for name in metric_names:
            value = evaluation[f"{iou_type}/{name}"]
            values[name] = float(value * 100) if value >= 0 else float("nan")
        for category, value in evaluation.per_category.get(iou_type, {}).items():
            values[f"AP-{category}"] = float(value * 100) if value >= 0 else float("nan")
        results[iou_type] = values
    return results


class COCOBoundaryEvaluator(_BoundaryEvaluator):
    """COCO mask AP and Boundary AP of a dataset registered with an annotation file.

    Args:
        dataset_name: a registered dataset whose metadata has ``json_file``.
        iou_types: any of ``"segm"``, ``"boundary"``.
        output_dir: also write the predictions there (``refine_hooks_segm_results.json``).
        distributed: gather predictions from all ranks and evaluate on the main process.
        max_dets: detections per image (default 100).
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        workers: processes computing boundaries.
    """

    metric_names = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def _evaluate(self, records):
        return evaluate_coco(self.gt, records, self.iou_types, workers=self.workers, max_dets=self.max_dets,
                             dilation_ratio=self.dilation_ratio, progress=False, boundary_cache=self._boundary_cache)


class LVISBoundaryEvaluator(_BoundaryEvaluator):
    """LVIS (federated) mask AP and Boundary AP; arguments as :class:`COCOBoundaryEvaluator`, ``max_dets``
    defaults to 300. Contiguous ids map back through ``thing_dataset_id_to_contiguous_id`` when the
    dataset has one, else as Detectron2's LVIS loader numbers them (category id - 1)."""

    metric_names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
    default_max_dets = 300
    loader_sets_mapping = False

    def _evaluate(self, records):
        return evaluate_lvis(self.gt, records, self.iou_types, workers=self.workers, max_dets=self.max_dets,
                             dilation_ratio=self.dilation_ratio, progress=False, boundary_cache=self._boundary_cache)
