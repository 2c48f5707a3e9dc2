"""The job's side of ``--uncertainty``: per refined record, SUM's uncertainty map (``refine_hooks.uncertainty``)
as a compressed map for the sidecar and two summary numbers for the record's ``refinement`` field.

Maps travel like the outputs: each finished chunk writes ``OUT.work/maps-<chunk>.bin`` (keyed by record
position) before its chunk file, and the merge writes ``<OUT>.uncertainty.bin`` in record order, so a
resumed, sharded or multi-rank job writes the same bytes as one uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.annotations import AnnotationFile, record_name
from ..data.windows import WindowedMap
from ..uncertainty import (KIND_COARSE_PROBABILITY, KIND_UNCERTAINTY, MapEntry, MapFile, MapFileError, certainty_summary,
                           quantize, uncertainty_map, uncertainty_path)
from ..uncertainty.sidecar import merge_map_files
from .options import JobOptions
from .plan import JobInputError, Plan

_LISTED = 10


def record_keys(annotations: AnnotationFile) -> Tuple[str, List[int]]:
    """How the sidecar names records: ``("id", ids)`` when every record has an integer ``id`` (COCO
    annotation files), else ``("index", positions)`` (result lists)."""
    ids = [record.get("id") for record in annotations.records]
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids):
        return "id", [int(i) for i in ids]
    return "index", list(range(len(annotations.records)))


def open_coarse_probabilities(options: JobOptions, annotations: AnnotationFile, plan: Plan, input_path: str) -> Optional[MapFile]:
    """The detector probabilities the options name, checked against the input before any work: keyed by
    annotation id, a map for every record to refine, each for its image's size."""
    if not options.uncertainty or options.coarse_probabilities is None:
        return None
    path = options.coarse_probabilities
    try:
        maps = MapFile(path, kind=KIND_COARSE_PROBABILITY)
    except (FileNotFoundError, MapFileError) as error:
        raise JobInputError(f"--coarse-probabilities: {error}") from error
    kind, keys = record_keys(annotations)
    if maps.key_kind != kind:
        raise JobInputError(f"--coarse-probabilities {path} is keyed by {maps.key_kind}, the records of {input_path} by {kind}")
    problems: List[str] = []
    for work in plan.images:
        for index, action in zip(work.record_indices, work.actions):
            if action is not None:
                continue
            key = keys[index]
            name = record_name(annotations.records[index], index)
            if key not in maps:
                problems.append(f"{name} of image {work.path}: no map")
            elif work.height is not None and maps.image_size(key) != (work.height, work.width):
                height, width = maps.image_size(key)
                problems.append(f"{name} of image {work.path}: map for a {height}x{width} image, the image is {work.height}x{work.width}")
    if problems:
        listed = "\n  ".join(problems[:_LISTED])
        more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise JobInputError(f"--coarse-probabilities {path} does not fit {input_path}: {len(problems)} records to refine have "
                            f"no usable map:\n  {listed}{more}")
    return maps


class UncertaintyRecorder:
    """Maps and summaries of refined records (main process)."""

    def __init__(self, options: JobOptions, keys: Sequence[int], coarse_maps: Optional[MapFile]):
        self.options = options
        self.keys = keys
        self.coarse_maps = coarse_maps

    def record(self, index: int, coarse: np.ndarray, refined: np.ndarray, probability: WindowedMap) -> Tuple[MapEntry, Dict[str, Any]]:
        """The map entry (keyed by record position) and the ``refinement`` fields of record ``index``.

        Args:
            coarse, refined: bool ``H x W``.
            probability: the refiner's σ(r) on its window.
        """
        detector = self.coarse_maps.levels(self.keys[index]) if self.coarse_maps is not None else None
        u = uncertainty_map(coarse, refined, probability, detector, self.options.coarse_width)
        levels = WindowedMap(quantize(u.values), u.x0, u.y0)
        summary = certainty_summary(levels, coarse, refined, self.options.uncertainty_theta)
        height, width = coarse.shape
        return MapEntry.from_levels(index, height, width, levels), summary


def write_sidecar(parts: Sequence[MapFile], keys: Sequence[int], key_kind: str, output_path: str, options: JobOptions,
                  refiner_options: Dict[str, Any]) -> str:
    """Merge the chunks' map parts into ``<OUT>.uncertainty.bin`` in record order; returns its path."""
    meta = {
        "values": "uint8 levels of u = |sigma(s) - sigma(r)| (SUM eq. 3), u = level / 255, certainty c = 1 - u; 0 outside the window",
        "uncertainty": options.uncertainty_options(),
        "refiner": {key: refiner_options[key] for key in ("refiner", "model_type", "refiner_kwargs", "precision")},
    }
    path = uncertainty_path(output_path)
    merge_map_files(path, parts, keys, kind=KIND_UNCERTAINTY, key=key_kind, meta=meta)
    return path


__all__ = ["UncertaintyRecorder", "open_coarse_probabilities", "record_keys", "write_sidecar"]
