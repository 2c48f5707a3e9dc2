"""Per-image preparation (runs in DataLoader workers) and per-record outputs.

A worker turns an :class:`~refine_hooks.jobs.plan.ImageWork` into :class:`WorkItem` s: the decoded image
and its coarse masks in groups whose size bounds memory (a 6000-pixel image with hundreds of masks is
split into several groups), plus the finished outputs of records that need no refiner. The main process
refines the groups and turns refined masks into output records with :func:`refined_output`.

An output is a dict of the fields a record gets in the final file; a record's ``segmentation`` is only
replaced when it was refined, so passed-through and copied records keep their mask byte for byte.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..data.images import ImageReadError, load_image
from ..data.masks import rle_encode_many, segmentation_to_rle
from ..refiners.base import PASS_BELOW_MIN_AREA, PASS_EMPTY
from .plan import COPY_IMAGE_UNREADABLE, COPY_INVALID_RECORD, ImageWork

INFO_KEY = "refinement"  # the field every output record gets
STATUS_REFINED = "refined"
STATUS_PASSED = "passed_through"
STATUS_COPIED = "copied"

# Masks handed over per group are bounded by pixels (bool masks cost a byte a pixel, and each worker holds
# ``prefetch_factor`` groups). The group size depends on nothing but the image, because on CPU the
# refiner's floating-point results for a mask can depend on which masks share its decoder call: any
# option-dependent grouping would make the output depend on throughput options.
MASK_PIXEL_BUDGET = 1 << 28


def _round(value: Optional[float]) -> Optional[float]:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 4)


def info(status: str, reason: Optional[str] = None, pred_iou: Optional[float] = None, iou_coarse: Optional[float] = None) -> Dict[str, Any]:
    """The small record of what happened to a record (stored under :data:`INFO_KEY`)."""
    return {"status": status, "reason": reason, "pred_iou": _round(pred_iou), "iou_coarse_refined": _round(iou_coarse)}


def copied_output(reason: str) -> Dict[str, Any]:
    """A record copied unchanged: only the refinement info is added."""
    return {INFO_KEY: info(STATUS_COPIED, reason)}


def passed_output(rle: Dict[str, Any], reason: str) -> Dict[str, Any]:
    """A record whose mask is kept: bbox and area recomputed from it (compressed RLE, bytes counts)."""
    return {
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": int(mask_utils.area(rle)),
        INFO_KEY: info(STATUS_PASSED, reason, iou_coarse=1.0),
    }


def refined_outputs(coarse: np.ndarray, refined: np.ndarray, pred_ious: np.ndarray) -> List[Dict[str, Any]]:
    """Outputs of refined masks.

    Args:
        coarse: bool ``N x H x W`` input masks.
        refined: bool ``N x H x W`` refined masks.
        pred_ious: float ``N``, the refiner's predicted IoU.
    """
    rles = rle_encode_many(refined)
    boxes = mask_utils.toBbox([{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]) if rles else []
    flat_coarse = coarse.reshape(coarse.shape[0], -1)
    flat_refined = refined.reshape(refined.shape[0], -1)
    outputs = []
    for j, rle in enumerate(rles):
        inter = np.count_nonzero(flat_coarse[j] & flat_refined[j])
        union = np.count_nonzero(flat_coarse[j] | flat_refined[j])
        outputs.append(
            {
                "segmentation": rle,
                "bbox": [float(v) for v in boxes[j]],
                "area": int(np.count_nonzero(flat_refined[j])),
                INFO_KEY: info(STATUS_REFINED, None, float(pred_ious[j]), inter / union if union else 1.0),
            }
        )
    return outputs


@dataclasses.dataclass
class WorkItem:
    """One group of one image's masks, ready for the refiner.

    Attributes:
        position: the image's :attr:`ImageWork.position`.
        group, groups: this is group ``group`` of the image's ``groups`` (groups >= 1).
        image: uint8 ``H x W x 3`` RGB, or None when the image has nothing to refine.
        masks: bool ``M x H x W`` coarse masks to refine (``M`` may be 0).
        record_indices: the record of each mask, length ``M``.
        outputs: finished outputs (record index -> output) of records that need no refiner.
        rles: compressed RLEs (bytes counts) of the ``M`` masks, for pass-through by the refiner.
    """

    position: int
    group: int
    groups: int
    image: Optional[np.ndarray]
    masks: np.ndarray
    record_indices: List[int]
    outputs: Dict[int, Dict[str, Any]]
    rles: List[Dict[str, Any]]


def _all_copied(work: ImageWork, reason: str) -> Dict[int, Dict[str, Any]]:
    return {index: copied_output(reason) for index in work.record_indices}


def prepare_image(work: ImageWork, *, min_area: int, skip_missing_images: bool) -> Iterator[WorkItem]:
    """Decode one image and its masks into :class:`WorkItem` groups (see the module docstring).

    Raises :class:`ImageReadError` naming the file when the image cannot be decoded and
    ``skip_missing_images`` is off.
    """
    empty = np.zeros((0, work.height or 0, work.width or 0), dtype=bool)
    if work.image_error is not None:
        yield WorkItem(work.position, 0, 1, None, empty, [], _all_copied(work, work.image_error), [])
        return
    outputs: Dict[int, Dict[str, Any]] = {}
    candidates: List[int] = []
    candidate_rles: List[Dict[str, Any]] = []
    for slot, (index, action, segmentation) in enumerate(zip(work.record_indices, work.actions, work.segmentations)):
        if action is not None and action.startswith(COPY_INVALID_RECORD):
            outputs[index] = copied_output(action)
            continue
        try:
            rle = segmentation_to_rle(segmentation, work.height, work.width)
        except (ValueError, TypeError) as error:  # plan checks make this rare: a corrupt counts string
            raise ValueError(f"record #{index} of image {work.path}: cannot decode its segmentation ({error})") from error
        if action is not None:
            outputs[index] = passed_output(rle, action)
            continue
        area = int(mask_utils.area(rle))
        if area == 0:
            outputs[index] = passed_output(rle, PASS_EMPTY)
        elif area < min_area:
            outputs[index] = passed_output(rle, PASS_BELOW_MIN_AREA)
        else:
            candidates.append(index)
            candidate_rles.append(rle)
    if not candidates:
        yield WorkItem(work.position, 0, 1, None, empty, [], outputs, [])
        return
    try:
        image = load_image(work.path)
        if image.shape[:2] != (work.height, work.width):
            raise ImageReadError(work.path, f"decoded to {image.shape[0]}x{image.shape[1]}, expected {work.height}x{work.width}")
    except ImageReadError as error:
        if not skip_missing_images:
            raise
        yield WorkItem(work.position, 0, 1, None, empty, [], _all_copied(work, f"{COPY_IMAGE_UNREADABLE}: {error.reason}"), [])
        return
    per_group = max(1, MASK_PIXEL_BUDGET // (work.height * work.width))
    groups = math.ceil(len(candidates) / per_group)
    for group in range(groups):
        rles = candidate_rles[group * per_group : (group + 1) * per_group]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        yield WorkItem(
            position=work.position,
            group=group,
            groups=groups,
            image=image,
            masks=np.ascontiguousarray(masks),
            record_indices=candidates[group * per_group : (group + 1) * per_group],
            outputs=outputs if group == 0 else {},
            rles=rles,
        )


class ImageWorkDataset(torch.utils.data.IterableDataset):
    """Yields :class:`WorkItem` s for a list of images; DataLoader workers take every k-th image."""

    def __init__(self, works: Sequence[ImageWork], *, min_area: int, skip_missing_images: bool):
        super().__init__()
        self.works = list(works)
        self.kwargs = dict(min_area=min_area, skip_missing_images=skip_missing_images)

    def __iter__(self) -> Iterator[WorkItem]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for work in self.works[worker_id::num_workers]:
            yield from prepare_image(work, **self.kwargs)


def keep_items(items: Any) -> Any:
    """DataLoader ``collate_fn`` that leaves work items as they are (no tensor conversion)."""
    return items
