"""One self-training round, framework-free: a detector's predictions on an unlabeled set become a coarse
COCO annotation file, which the pseudo-label job refines into the next round's file.

The framework hooks (``refine_hooks.mmdet.PseudoLabelRefineHook``, ``refine_hooks.detectron2.PseudoLabelRefineHook``)
only run their model over the unlabeled images and gather the per-image annotations across ranks.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from refine_hooks.data.masks import mask_to_xywh, rle_encode_many
from refine_hooks.data.windows import WindowedMap, mask_box, union_box

from .options import JobOptions

COARSE_NAME = "pseudo_coarse.json"
REFINED_NAME = "pseudo_refined.json"

# image id -> that image's pseudo-label annotations (no "id" yet); images without detections map to []
RoundAnnotations = Dict[int, List[Dict[str, Any]]]
# Where an annotation carries its detector's mask probabilities between prediction and the coarse file
# (uint8 levels on a window); never written into the file itself.
PROBABILITY_KEY = "_mask_probability"


def detections_to_annotations(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: int,
                              category_ids: Sequence[int], score_thr: float,
                              probabilities: Optional[np.ndarray] = None) -> Tuple[List[Dict[str, Any]], int]:
    """COCO annotations (no ``id`` yet; RLE with str counts, the mask's box and area, ``score``) of one
    image's detections with ``score >= score_thr``, and how many such detections had an empty mask (an
    empty mask is no annotation: left out and counted).

    Args:
        masks: bool ``N x H x W``; scores: float ``N``; labels: int ``N`` contiguous labels.
        category_ids: dataset category id of each label.
        probabilities: uint8 ``N x H x W`` levels (``round`` or ``floor`` of ``255 p``) of the detector's mask
            probabilities, if it kept them: each annotation then carries them under :data:`PROBABILITY_KEY`
            on the window where they are nonzero (with the mask's box).
    """
    keep = np.flatnonzero(scores >= score_thr)
    out, empty = [], 0
    for j, rle in zip(keep, rle_encode_many(masks[keep])):
        if not masks[j].any():
            empty += 1
            continue
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(labels[j])]),
                    "segmentation": rle, "area": float(masks[j].sum()), "bbox": mask_to_xywh(masks[j]),
                    "iscrowd": 0, "score": float(scores[j])})
        if probabilities is not None:
            x1, y1, x2, y2 = union_box(mask_box(masks[j]), mask_box(probabilities[j] > 0))
            out[-1][PROBABILITY_KEY] = WindowedMap(np.ascontiguousarray(probabilities[j, y1:y2 + 1, x1:x2 + 1]), x1, y1)
    return out, empty


def write_coarse_probabilities(path: str, annotations: List[Dict[str, Any]], image_info: Mapping[str, Any]) -> Optional[str]:
    """Take the :data:`PROBABILITY_KEY` windows out of the numbered ``annotations`` and write them as a map
    file keyed by annotation id (:mod:`refine_hooks.uncertainty.sidecar`) for the job's
    ``coarse_probabilities``. Returns ``path``, or None (and no file) when no annotation had any."""
    from refine_hooks.uncertainty import KIND_COARSE_PROBABILITY, MapEntry, write_map_file

    sizes = {image["id"]: (int(image["height"]), int(image["width"])) for image in image_info["images"]}
    entries = [MapEntry.from_levels(a["id"], *sizes[a["image_id"]], a.pop(PROBABILITY_KEY))
               for a in annotations if PROBABILITY_KEY in a]
    if os.path.exists(path):
        os.remove(path)  # a previous run's file of this round
    if not entries:
        return None
    write_map_file(path, entries, kind=KIND_COARSE_PROBABILITY,
                   meta={"values": "uint8 levels of the detector's mask probabilities p (level / 255); 0 outside the window"})
    return path


def merge_rank_annotations(parts: Iterable[RoundAnnotations]) -> List[Dict[str, Any]]:
    """All ranks' annotations in one list, numbered from 1 (images by id, each image's by falling score).

    Under DDP a sampler may give an image to more than one rank (padding): its first copy is kept.
    """
    by_image: RoundAnnotations = {}
    for part in parts:
        for image_id, image_annotations in part.items():
            by_image.setdefault(int(image_id), image_annotations)
    merged = [a for image_id in sorted(by_image) for a in sorted(by_image[image_id], key=lambda a: -a["score"])]
    for i, annotation in enumerate(merged, start=1):
        annotation["id"] = i
    return merged


def write_coarse_file(path: str, image_info: Mapping[str, Any], annotations: List[Dict[str, Any]]) -> None:
    """Write the round's coarse annotation file atomically: the unlabeled set's images and categories
    (and ``info`` / ``licenses``) with ``annotations``."""
    coarse = {"images": image_info["images"], "categories": image_info["categories"], "annotations": annotations}
    for key in ("info", "licenses"):
        if key in image_info:
            coarse[key] = image_info[key]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(coarse, f)
    os.replace(path + ".tmp", path)


def round_job_options(refiner_spec: Any, device: torch.device, *, progress: bool,
                      overrides: Optional[Mapping[str, Any]] = None) -> JobOptions:
    """:class:`JobOptions` of a hook's round: the refiner config (recorded in the job's manifest) on the
    model's device, in-process image loading, plus the hook's ``overrides``."""
    options: Dict[str, Any] = {"workers": 0, "progress": progress, "device": str(device)}
    if isinstance(refiner_spec, Mapping):
        options["model_type"] = refiner_spec.get("model_type", JobOptions.model_type)
        options["checkpoint"] = refiner_spec.get("checkpoint")
        options["refiner_kwargs"] = {k: v for k, v in refiner_spec.items()
                                     if k not in ("type", "model_type", "checkpoint", "device")}
    options.update(overrides or {})
    return JobOptions(**options)
