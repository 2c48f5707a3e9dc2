"""SUM-style uncertainty-aware training in Detectron2 (docs/uncertainty.md): a dataset registered with
its uncertainty sidecar, a mapper that carries each instance's map on ``Instances.gt_uncertainty``
through Detectron2's own transforms, and a Mask R-CNN mask head whose BCE weights every target pixel by
its certainty ``c = 1 − u``, RoI-aligned with the proposals that crop the mask targets (SUM eq. 1 with BCE).

::

    cfg = get_cfg(); add_uncertainty_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_file("configs/detectron2/uncertainty.yaml")     # the head, bitmask masks
    register_coco_instances_with_uncertainty("pseudo_r2", {}, "pseudo_refined.json", "images/")
    trainer = UncertaintyTrainer(cfg)                              # DefaultTrainer with the mapper
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.data.datasets import load_coco_json
from detectron2.engine import DefaultTrainer
from detectron2.layers import ROIAlign, cat
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead, mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from refine_hooks.uncertainty import (KIND_UNCERTAINTY, MapFile, MapFileError, certainty_from_resampled_levels,
                                      check_against_annotations, ua_bce_with_logits, uncertainty_path)

UNCERTAINTY_FIELD = "gt_uncertainty"  # uint8 N x H x W levels on Instances; "gt_" makes ROIHeads copy it to proposals


def add_uncertainty_config(cfg: CN) -> None:
    """Add ``cfg.INPUT.UNCERTAINTY`` (idempotent).

    ``INPUT.UNCERTAINTY.REQUIRED``: :class:`UncertaintyDatasetMapper` stops at an image whose dataset was not
    registered with :func:`register_coco_instances_with_uncertainty` (True), or trains its instances as
    certain (False: human-labelled sets mixed in).
    """
    if "UNCERTAINTY" in cfg.INPUT:
        return
    cfg.INPUT.UNCERTAINTY = CN()
    cfg.INPUT.UNCERTAINTY.REQUIRED = True


def load_coco_json_with_uncertainty(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                                    uncertainty_file: Optional[str] = None) -> List[Dict[str, Any]]:
    """Detectron2's ``load_coco_json`` keeping each annotation's ``id``, with every record naming the
    sidecar (``uncertainty_file``), after checking that the sidecar belongs to ``json_file``."""
    sidecar = uncertainty_file or uncertainty_path(json_file)
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(f"the uncertainty sidecar {sidecar} of {json_file} does not exist; write it with "
                                "tools/refine_pseudo_labels.py --uncertainty, or name it with uncertainty_file=")
    with open(json_file) as f:
        coco = json.load(f)
    sizes = {image["id"]: (int(image["height"]), int(image["width"])) for image in coco["images"]}
    check_against_annotations(MapFile(sidecar, kind=KIND_UNCERTAINTY), coco["annotations"], sizes, json_file)
    records = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])
    for record in records:
        record["uncertainty_file"] = sidecar
    return records


def register_coco_instances_with_uncertainty(name: str, metadata: Mapping[str, Any], json_file: str, image_root: str,
                                             uncertainty_file: Optional[str] = None) -> None:
    """``register_coco_instances`` for a refined pseudo-label file and its sidecar (default: the one the
    pseudo-label job wrote next to ``json_file``)."""
    DatasetCatalog.register(name, lambda: load_coco_json_with_uncertainty(json_file, image_root, name, uncertainty_file))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  uncertainty_file=uncertainty_file or uncertainty_path(json_file), **metadata)


class UncertaintyDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that also sets ``instances.gt_uncertainty``: each instance's uncertainty levels
    from the record's sidecar (0 for records without a map), moved by the same ``transforms`` as its mask
    (``apply_segmentation``, Detectron2's own geometry). Needs ``INPUT.MASK_FORMAT: bitmask``.
    """

    def __init__(self, cfg, is_train: bool = True, **kwargs):
        super().__init__(cfg, is_train=is_train, **kwargs)
        if is_train and self.instance_mask_format != "bitmask":
            raise ValueError("UncertaintyDatasetMapper needs INPUT.MASK_FORMAT: bitmask (the maps are bitmaps)")
        self.required = cfg.INPUT.UNCERTAINTY.REQUIRED if "UNCERTAINTY" in cfg.INPUT else True
        self._files: Dict[str, MapFile] = {}

    def _levels(self, dataset_dict) -> List[np.ndarray]:
        """uint8 ``H x W`` levels of each annotation of the record, at the image's original size."""
        height, width = dataset_dict["height"], dataset_dict["width"]
        path = dataset_dict.get("uncertainty_file")
        annotations = dataset_dict["annotations"]
        levels = [np.zeros((height, width), dtype=np.uint8) for _ in annotations]
        if path is None:
            if self.required:
                raise KeyError(f"{dataset_dict['file_name']}: its dataset has no uncertainty sidecar; register it with "
                               "register_coco_instances_with_uncertainty, or set INPUT.UNCERTAINTY.REQUIRED False")
            return levels
        if path not in self._files:
            self._files[path] = MapFile(path, kind=KIND_UNCERTAINTY)
        maps = self._files[path]
        for slot, annotation in enumerate(annotations):
            key = annotation.get("id")
            if key is None or key not in maps:
                continue
            if maps.image_size(key) != (height, width):
                raise MapFileError(f"{path}: the map of annotation id {key} is for a {maps.image_size(key)} image, "
                                   f"{dataset_dict['file_name']} is {height}x{width}")
            window = maps.levels(key)
            x1, y1, x2, y2 = window.box
            levels[slot][y1:y2 + 1, x1:x2 + 1] = window.values
        return levels

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        """Detectron2's ``DatasetMapper._transform_annotations``, with the maps transformed alongside."""
        levels = self._levels(dataset_dict)
        for annotation in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                annotation.pop("segmentation", None)
            if not self.use_keypoint:
                annotation.pop("keypoints", None)
        kept = [(obj, lv) for obj, lv in zip(dataset_dict.pop("annotations"), levels) if obj.get("iscrowd", 0) == 0]
        annotations = [utils.transform_instance_annotations(obj, transforms, image_shape,
                                                            keypoint_hflip_indices=self.keypoint_hflip_indices)
                       for obj, _ in kept]
        instances = utils.annotations_to_instances(annotations, image_shape, mask_format=self.instance_mask_format)
        maps = [np.ascontiguousarray(transforms.apply_segmentation(lv)) for _, lv in kept]
        instances.set(UNCERTAINTY_FIELD, torch.from_numpy(np.stack(maps)) if maps
                      else torch.zeros((0, *image_shape), dtype=torch.uint8))
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)


def aligned_certainty(instances: Instances, mask_side_len: int) -> torch.Tensor:
    """float ``N x M x M`` certainty of the mask targets of ``instances`` (proposals with ``gt_uncertainty``):
    the levels RoI-aligned with the proposal boxes exactly as ``BitMasks.crop_and_resize`` aligns the masks
    (``ROIAlign(M, 1.0, 0, aligned=True)``), without thresholding; c = 1 − aligned / 255
    (:func:`refine_hooks.uncertainty.certainty_from_resampled_levels`)."""
    boxes = instances.proposal_boxes.tensor
    levels = instances.get(UNCERTAINTY_FIELD)
    batch = torch.arange(len(boxes), device=levels.device).to(dtype=boxes.dtype)[:, None]
    rois = torch.cat([batch, boxes.to(levels.device)], dim=1)
    aligned = ROIAlign((mask_side_len, mask_side_len), 1.0, 0, aligned=True).forward(levels[:, None].float(), rois).squeeze(1)
    return certainty_from_resampled_levels(aligned)


def uncertainty_aware_mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0) -> torch.Tensor:
    """Detectron2's ``mask_rcnn_loss`` with each target pixel's BCE weighted by its certainty (images
    without ``gt_uncertainty``: c = 1). Detectron2's own loss runs too, for its accuracy metrics (and is
    what a batch without any maps returns)."""
    plain = mask_rcnn_loss(pred_mask_logits, instances, vis_period)
    if not any(len(i) and i.has(UNCERTAINTY_FIELD) for i in instances):
        return plain
    side = pred_mask_logits.size(2)
    classes, targets, certainty = [], [], []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        classes.append(per_image.gt_classes.to(dtype=torch.int64))
        targets.append(per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side).to(pred_mask_logits.device))
        certainty.append(aligned_certainty(per_image, side).to(pred_mask_logits.device) if per_image.has(UNCERTAINTY_FIELD)
                         else torch.ones((len(per_image), side, side), device=pred_mask_logits.device))
    if pred_mask_logits.size(1) == 1:
        logits = pred_mask_logits[:, 0]
    else:
        logits = pred_mask_logits[torch.arange(pred_mask_logits.size(0)), cat(classes, dim=0)]
    certainty = cat(certainty, dim=0)
    get_event_storage().put_scalar("mask_rcnn/mean_certainty", float(certainty.mean()))
    return ua_bce_with_logits(logits, cat(targets, dim=0).to(dtype=torch.float32), certainty)


@ROI_MASK_HEAD_REGISTRY.register()
class UncertaintyAwareMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` trained with :func:`uncertainty_aware_mask_rcnn_loss`
    (``MODEL.ROI_MASK_HEAD.NAME: UncertaintyAwareMaskRCNNConvUpsampleHead``); inference is unchanged."""

    def forward(self, x, instances: List[Instances]):
        x = self.layers(x)
        if self.training:
            return {"loss_mask": uncertainty_aware_mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances


def build_uncertainty_train_loader(cfg):
    """Detectron2's train loader with :class:`UncertaintyDatasetMapper`."""
    return build_detection_train_loader(cfg, mapper=UncertaintyDatasetMapper(cfg, is_train=True))


class UncertaintyTrainer(DefaultTrainer):
    """``DefaultTrainer`` whose train loader carries the uncertainty maps."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_uncertainty_train_loader(cfg)


def keep_mask_probabilities(model, inputs: List[Dict[str, Any]]):
    """``(outputs, probabilities)`` of a GeneralizedRCNN-style model: its usual outputs (``forward`` in eval
    mode: ``inference`` then ``detector_postprocess``) and, per image, the mask probabilities pasted at the
    image's size as uint8 ``⌊255 p⌋`` (Detectron2's own ``paste_masks_in_image`` with ``threshold < 0``,
    on the boxes and instances ``detector_postprocess`` kept). For models without
    ``inference(..., do_postprocess=False)`` and a mask head: ``(None, None)``."""
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.modeling.postprocessing import detector_postprocess

    if not (hasattr(model, "inference") and hasattr(model, "roi_heads") and getattr(model.roi_heads, "mask_on", False)):
        return None, None
    outputs, probabilities = [], []
    for result, record in zip(model.inference(inputs, do_postprocess=False), inputs):
        height = record.get("height", result.image_size[0])
        width = record.get("width", result.image_size[1])
        result.set("roi_mask_probabilities", result.pred_masks)  # rides through the postprocess's filtering
        instances = detector_postprocess(result, height, width)
        roi_probabilities = instances.get("roi_mask_probabilities")
        instances.remove("roi_mask_probabilities")
        soft = paste_masks_in_image(roi_probabilities[:, 0], instances.pred_boxes, (height, width), threshold=-1.0)
        outputs.append({"instances": instances})
        probabilities.append(soft.cpu().numpy())
    return outputs, probabilities
