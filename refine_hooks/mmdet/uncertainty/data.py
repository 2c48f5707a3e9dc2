"""Uncertainty sidecars in mmdet's data pipeline: a COCO dataset that names each instance's annotation id
and its sidecar, and the ``LoadUncertainty`` transform that puts the maps next to the masks.

::

    train_dataloader = dict(dataset=dict(
        type='UncertaintyCocoDataset', ann_file='pseudo_refined.json',   # sidecar: pseudo_refined.uncertainty.bin
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                  dict(type='LoadUncertainty'), ...mmdet's transforms..., dict(type='PackDetInputs')]))
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS, TRANSFORMS
from mmdet.structures.mask import BitmapMasks

from refine_hooks.uncertainty import KIND_UNCERTAINTY, MapFile, MapFileError, check_against_annotations, uncertainty_path

from .masks import BitmapMasksWithUncertainty


@DATASETS.register_module()
class UncertaintyCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` whose instances also carry their annotation id (``ann_id``) and whose
    samples name the uncertainty sidecar (``uncertainty_file``) for :class:`LoadUncertainty`.

    The sidecar is checked against the annotation file when the dataset loads: maps for ids the file does
    not have, refined records without a map, or maps of another image size stop with an error naming
    both files and the records.

    Args:
        uncertainty_file: the sidecar; relative paths are under ``data_root`` like ``ann_file``.
            Default: the one ``tools/refine_pseudo_labels.py --uncertainty`` writes next to ``ann_file``.
        **kwargs: ``CocoDataset``'s.
    """

    def __init__(self, *args, uncertainty_file: Optional[str] = None, **kwargs):
        self._uncertainty_file = uncertainty_file
        super().__init__(*args, **kwargs)

    @property
    def uncertainty_file(self) -> str:
        if self._uncertainty_file is None:
            return uncertainty_path(self.ann_file)
        if os.path.isabs(self._uncertainty_file) or not self.data_root:
            return self._uncertainty_file
        return os.path.join(self.data_root, self._uncertainty_file)

    def load_data_list(self) -> List[dict]:
        path = self.uncertainty_file
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{type(self).__name__}: the uncertainty sidecar {path} of {self.ann_file} does not exist; write it with "
                "tools/refine_pseudo_labels.py --uncertainty, or name it with uncertainty_file=...")
        self._records: List[Dict[str, Any]] = []
        self._image_sizes: Dict[Any, Tuple[int, int]] = {}
        data_list = super().load_data_list()
        check_against_annotations(MapFile(path, kind=KIND_UNCERTAINTY), self._records, self._image_sizes, self.ann_file)
        del self._records, self._image_sizes
        return data_list

    def parse_data_info(self, raw_data_info: dict):
        data_info = super().parse_data_info(raw_data_info)
        annotations = raw_data_info["raw_ann_info"]
        image = raw_data_info["raw_img_info"]
        self._records.extend(annotations)
        self._image_sizes[image["img_id"]] = (int(image["height"]), int(image["width"]))
        # CocoDataset skips some annotations and copies none of their ids, but an instance's mask is its
        # annotation's very segmentation object: that identifies the annotation.
        by_segmentation = {id(a["segmentation"]): a for a in annotations if a.get("segmentation")}
        for instance in data_info["instances"]:
            annotation = by_segmentation.get(id(instance.get("mask")))
            instance["ann_id"] = None if annotation is None or "id" not in annotation else int(annotation["id"])
        data_info["uncertainty_file"] = self.uncertainty_file
        return data_info


@TRANSFORMS.register_module()
class LoadUncertainty(BaseTransform):
    """Turn ``results['gt_masks']`` into :class:`BitmapMasksWithUncertainty` holding each instance's map
    from the sample's ``uncertainty_file`` (instances without a map, i.e. records that were not refined,
    are certain: ``u = 0``). Put it right after ``LoadAnnotations(with_mask=True)``; mmdet's transforms
    after it then move the maps with the masks.

    Args:
        required: a sample without ``uncertainty_file`` (a dataset that is not an
            :class:`UncertaintyCocoDataset`, e.g. human labels mixed in) is an error; False: it is certain.
    """

    def __init__(self, required: bool = True):
        self.required = required
        self._files: Dict[str, MapFile] = {}

    def _maps(self, path: str) -> MapFile:
        if path not in self._files:
            self._files[path] = MapFile(path, kind=KIND_UNCERTAINTY)
        return self._files[path]

    def transform(self, results: dict) -> dict:
        masks = results.get("gt_masks")
        where = results.get("img_path", "?")
        if masks is None:
            raise KeyError(f"LoadUncertainty: sample {where} has no gt_masks; put LoadAnnotations(with_mask=True) before it")
        if not isinstance(masks, BitmapMasks):
            raise TypeError(f"LoadUncertainty needs bitmap masks, got {type(masks).__name__}: use LoadAnnotations(poly2mask=True)")
        levels = np.zeros(masks.masks.shape, dtype=np.uint8)
        path = results.get("uncertainty_file")
        if path is None and self.required:
            raise KeyError(f"LoadUncertainty: sample {where} names no uncertainty_file; use UncertaintyCocoDataset for its "
                           "dataset, or LoadUncertainty(required=False) for datasets without sidecars")
        if path is not None:
            maps = self._maps(path)
            instances = results.get("instances", [])
            if len(instances) != len(masks):
                raise ValueError(f"LoadUncertainty: sample {where} has {len(instances)} instances but {len(masks)} masks; "
                                 "put it right after LoadAnnotations")
            for slot, instance in enumerate(instances):
                key = instance.get("ann_id")
                if key is None or key not in maps:
                    continue
                if maps.image_size(key) != (masks.height, masks.width):
                    height, width = maps.image_size(key)
                    raise MapFileError(f"{path}: the map of annotation id {key} is for a {height}x{width} image, but its mask in "
                                       f"{where} is {masks.height}x{masks.width}")
                window = maps.levels(key)
                x1, y1, x2, y2 = window.box
                levels[slot, y1:y2 + 1, x1:x2 + 1] = window.values
        results["gt_masks"] = BitmapMasksWithUncertainty(masks.masks, masks.height, masks.width, levels)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(required={self.required})"
