"""Turn a loaded annotation file into per-image work, checking everything that can be checked cheaply
before any GPU time is spent: every record's image exists, every segmentation is well formed and has
its image's size, every image file exists and has a readable header of the expected size.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..data.annotations import AnnotationFile, record_name
from ..data.images import ImageReadError, read_image_size
from ..scores import meets_score_thr, record_score

# Why a record is passed through (its mask kept) before the refiner sees it.
PASS_CROWD = "crowd"
PASS_BELOW_SCORE = "below_score_thr"
PASS_NO_SCORE = "no_score"  # no (or a null / NaN) score while --score-thr > 0: see refine_hooks.scores
# Why a record is copied unchanged (no bbox/area recomputed): it could not be looked at.
COPY_IMAGE_UNREADABLE = "image_unreadable"
COPY_INVALID_RECORD = "invalid_record"

_MAX_LISTED_PROBLEMS = 20
_MAX_LISTED_EXAMPLES = 5


class JobInputError(ValueError):
    """The input cannot be processed as the options say; the message lists the records / files
    (``problems``: one line per record or file, when the error is about several)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclasses.dataclass
class ImageWork:
    """The records of one image and what to do with each.

    Attributes:
        position: index of the image among the images that have records (the chunking order).
        image_id: the image's id in the annotation file.
        path: the image file.
        height, width: the size every mask of the image has.
        record_indices: indices into ``AnnotationFile.records``, in file order.
        actions: per record, ``None`` to refine it, else the reason it is passed through.
        segmentations: per record, the segmentation as it came (polygons or RLE).
        image_error: set when the image could not be read and the options say to copy its records.
    """

    position: int
    image_id: Hashable
    path: str
    height: Optional[int]
    width: Optional[int]
    record_indices: List[int]
    actions: List[Optional[str]]
    segmentations: List[Any]
    image_error: Optional[str] = None

    @property
    def needs_pixels(self) -> bool:
        return self.image_error is None and any(action is None for action in self.actions)


@dataclasses.dataclass
class Plan:
    """All work of a job. ``images`` are in file order; ``copied`` holds records that belong to no image
    work (unknown image or malformed segmentation, when the options allow it) with their reason."""

    images: List[ImageWork]
    copied: Dict[int, str]

    def chunks(self, chunk_size: int) -> List[List[ImageWork]]:
        return [self.images[start : start + chunk_size] for start in range(0, len(self.images), chunk_size)]


def _segmentation_problem(segmentation: Any, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why a segmentation cannot be decoded at ``height x width`` (None: it can; size unknown is not checked)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "segmentation is an empty polygon list"
        for polygon in segmentation:
            if not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2:
                return "polygon with fewer than 3 points or an odd number of coordinates"
        return None
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            return "RLE without 'counts' or 'size'"
        if not isinstance(segmentation["counts"], (str, bytes, list)):
            return f"RLE counts of type {type(segmentation['counts']).__name__}"
        size = [int(s) for s in segmentation["size"]]
        if height is not None and size != [height, width]:
            return f"mask size {size[0]}x{size[1]} does not match the image size {height}x{width}"
        return None
    if segmentation is None:
        return "record has no 'segmentation'"
    return f"segmentation of type {type(segmentation).__name__} (expected polygons or RLE)"


def _raise_problems(kind: str, problems: Sequence[str], hint: str) -> None:
    listed = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more" if len(problems) > _MAX_LISTED_PROBLEMS else ""
    raise JobInputError(f"{len(problems)} {kind}; nothing was refined:\n  {listed}{more}\n{hint}", problems)


def input_warnings(annotations: AnnotationFile) -> List[str]:
    """What the job writes back as it came although the frameworks that train on the output will not take it.

    Only COCO annotation files (result lists have neither ids nor categories of their own):
    - annotation ids used by more than one record: MMDetection's and Detectron2's COCO loaders refuse the
      file ("Annotation ids ... are not unique"), and pycocotools' ``anns`` keeps one record per id;
    - a ``category_id`` missing from a non-empty ``categories`` list: MMDetection drops such records when it
      loads the file, Detectron2 raises.
    The job itself uses neither, so these records are refined and written like the others.
    """
    if annotations.kind != "coco":
        return []
    warnings: List[str] = []
    records_of_id: Dict[Hashable, List[int]] = {}
    for index, record in enumerate(annotations.records):
        if isinstance(record.get("id"), Hashable):
            records_of_id.setdefault(record["id"], []).append(index)
    repeated = [(ann_id, indices) for ann_id, indices in records_of_id.items() if len(indices) > 1]
    if repeated:
        examples = "; ".join(f"id {ann_id!r}: records " + ", ".join(f"#{i}" for i in indices)
                             for ann_id, indices in repeated[:_MAX_LISTED_EXAMPLES])
        warnings.append(f"annotation ids used by more than one record: {len(repeated)} ({examples}"
                        f"{'; ...' if len(repeated) > _MAX_LISTED_EXAMPLES else ''}): the output keeps them, but "
                        "MMDetection's and Detectron2's COCO loaders refuse a file whose annotation ids repeat")
    categories = annotations.data.get("categories")
    if isinstance(categories, list) and categories:
        known = {c.get("id") for c in categories if isinstance(c, dict) and isinstance(c.get("id"), Hashable)}
        unknown: Dict[str, List[int]] = {}
        for index, record in enumerate(annotations.records):
            category = record.get("category_id")
            if not isinstance(category, Hashable) or category not in known:
                unknown.setdefault(repr(category), []).append(index)
        if unknown:
            examples = "; ".join(f"category_id {category}: {len(indices)}, the first "
                                 f"{record_name(annotations.records[indices[0]], indices[0])}"
                                 for category, indices in list(unknown.items())[:_MAX_LISTED_EXAMPLES])
            count = sum(len(indices) for indices in unknown.values())
            warnings.append(f"records whose category_id is not in the file's categories: {count} ({examples}"
                            f"{'; ...' if len(unknown) > _MAX_LISTED_EXAMPLES else ''}): the output keeps them, but "
                            "MMDetection drops such records when it loads the file and Detectron2 refuses it")
    return warnings


def build_plan(annotations: AnnotationFile, image_dir: str, *, score_thr: float, skip_invalid_records: bool) -> Plan:
    """Group records by image and decide, per record, refine / pass through / copy.

    A record whose score is below ``score_thr`` is passed through (``below_score_thr``); one without a
    score (missing, null, NaN) too when ``score_thr > 0`` (``no_score``; the rule: :mod:`refine_hooks.scores`);
    a score that is not a number makes the record invalid.

    Checks records only (no file access). Raises :class:`JobInputError` listing every malformed record
    unless ``skip_invalid_records``.
    """
    position_of = {image_id: position for position, image_id in enumerate(annotations.image_order)}
    per_image: Dict[int, List[int]] = {}
    copied: Dict[int, str] = {}
    problems: List[str] = []
    for index, record in enumerate(annotations.records):
        image_id = record["image_id"]
        info = annotations.images.get(image_id)
        if info is None or image_id not in position_of:
            problem = f"{record_name(record, index)}: image id {image_id!r} is not in the images of the file"
        else:
            problem = _segmentation_problem(record.get("segmentation"), info.height, info.width)
            if problem is None and record_score(record) is None:
                problem = f"score {record['score']!r} is not a number"
            if problem is not None:
                problem = f"{record_name(record, index)} of image {info.file_name}: {problem}"
        if problem is not None:
            problems.append(problem)
            copied[index] = f"{COPY_INVALID_RECORD}: {problem.split(': ', 1)[1]}"
            continue
        per_image.setdefault(position_of[image_id], []).append(index)
    if problems and not skip_invalid_records:
        _raise_problems("invalid records", problems, "Fix them, or pass --skip-invalid-records to copy them unchanged.")

    images: List[ImageWork] = []
    for position in sorted(per_image):
        image_id = annotations.image_order[position]
        info = annotations.images[image_id]
        indices = per_image[position]
        actions: List[Optional[str]] = []
        for index in indices:
            record = annotations.records[index]
            score = record_score(record)
            if record.get("iscrowd", 0):
                actions.append(PASS_CROWD)
            elif not meets_score_thr(np.array([score]), score_thr)[0]:
                actions.append(PASS_NO_SCORE if math.isnan(score) else PASS_BELOW_SCORE)
            else:
                actions.append(None)
        images.append(
            ImageWork(
                position=len(images),
                image_id=image_id,
                path=os.path.join(image_dir, info.file_name),
                height=info.height,
                width=info.width,
                record_indices=indices,
                actions=actions,
                segmentations=[annotations.records[i].get("segmentation") for i in indices],
            )
        )
    return Plan(images=images, copied=copied)


def _header_size(work: ImageWork) -> Tuple[ImageWork, Optional[Tuple[int, int]], Optional[str]]:
    try:
        return work, read_image_size(work.path), None
    except ImageReadError as error:
        return work, None, error.reason


def check_images(
    works: Sequence[ImageWork],
    *,
    skip_missing_images: bool,
    skip_invalid_records: bool,
    threads: int = 8,
    progress: bool = True,
    skip_hints: bool = True,
) -> List[str]:
    """Check the header of every image that is needed: it exists, decodes, and has the size the file says.

    Fills in unknown sizes and checks masks against them. ``skip_hints``: the problems name the job's
    ``--skip-*`` options that would copy the records instead. With ``skip_missing_images`` an unreadable
    image gets ``image_error`` (its records will be copied); with ``skip_invalid_records`` a record whose
    mask size disagrees is passed to the copy list by setting its action. Returns the problems that the
    options do not allow (the caller raises, after all ranks have checked).
    """
    needed = [w for w in works if w.needs_pixels or w.height is None]
    image_problems: List[str] = []
    record_problems: List[str] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = pool.map(_header_size, needed)
        for work, size, reason in tqdm(results, total=len(needed), desc="checking images", disable=not progress, unit="img"):
            if size is not None and work.height is not None and size != (work.height, work.width):
                reason = f"the file is {size[0]}x{size[1]} but the annotation file says {work.height}x{work.width}"
            if reason is not None:
                if skip_missing_images:
                    work.image_error = f"{COPY_IMAGE_UNREADABLE}: {reason}"
                else:
                    image_problems.append(f"image id {work.image_id!r} ({work.path}): {reason}")
                continue
            if work.height is None:
                work.height, work.width = size
                for slot, segmentation in enumerate(work.segmentations):
                    problem = _segmentation_problem(segmentation, work.height, work.width)
                    if problem is None:
                        continue
                    if skip_invalid_records:
                        work.actions[slot] = f"{COPY_INVALID_RECORD}: {problem}"
                    else:
                        record_problems.append(f"record #{work.record_indices[slot]} of image {work.path}: {problem}")
    problems = []
    if image_problems:
        hint = " (pass --skip-missing-images to copy their records)" if skip_hints else ""
        problems.append(
            f"{len(image_problems)} missing or unreadable images{hint}:\n  "
            + "\n  ".join(image_problems[:_MAX_LISTED_PROBLEMS])
        )
    if record_problems:
        hint = " (pass --skip-invalid-records to copy them)" if skip_hints else ""
        problems.append(
            f"{len(record_problems)} invalid records{hint}:\n  "
            + "\n  ".join(record_problems[:_MAX_LISTED_PROBLEMS])
        )
    return problems
