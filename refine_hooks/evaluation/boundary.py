"""Boundary IoU (Cheng et al., CVPR 2021) on bool masks and on COCO RLEs.

Definition (the paper and its official API): the boundary of a mask ``G`` of an ``H x W`` image is
``G`` minus its erosion by a 3x3 square repeated ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))``
times, the mask first padded with one row/column of zeros so that a mask cut by the image border has a
boundary there too. Boundary IoU is the IoU of the two boundaries.

How this module computes it (same pixels, fewer of them):
- ``d`` erosions by a 3x3 square equal one erosion by a ``(2d+1) x (2d+1)`` square, and with the zero
  padding every pixel outside the image counts as background. So the erosion of a mask only needs the
  mask's bounding box, eroded with a constant-zero border.
- COCO RLEs are decoded straight into that bounding box and the boundary is re-encoded from it, so the
  cost of one boundary follows the object's size, not the image's. Tests check the result pixel for pixel
  against the official formula (``cv2.copyMakeBorder`` + ``cv2.erode(3x3, iterations=d)``).
"""

from __future__ import annotations

import math
import multiprocessing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

DEFAULT_DILATION_RATIO = 0.02


def boundary_dilation(height: int, width: int, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Band width ``d`` in pixels for an ``height x width`` image: ``max(1, round(ratio * diagonal))``.

    Python's ``round`` (half to even) is what the official API uses, so it is used here too.
    """
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def _erode_zero_outside(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Erode a uint8 ``h x w`` 0/1 array by a ``(2d+1)`` square, treating everything outside as 0."""
    kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), dtype=np.uint8)
    return cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> np.ndarray:
    """Boundary band of a bool ``H x W`` mask -> bool ``H x W`` (``d`` from the mask's own size)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    mask = mask.astype(bool)
    h, w = mask.shape
    eroded = _erode_zero_outside(mask.astype(np.uint8), boundary_dilation(h, w, dilation_ratio))
    return mask & ~eroded.astype(bool)


def boundary_iou(a: np.ndarray, b: np.ndarray, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> float:
    """Boundary IoU of two bool ``H x W`` masks; 0.0 when both boundaries are empty (as pycocotools)."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in size: {a.shape} vs {b.shape}")
    ba, bb = mask_to_boundary(a, dilation_ratio), mask_to_boundary(b, dilation_ratio)
    union = np.logical_or(ba, bb).sum()
    return float(np.logical_and(ba, bb).sum() / union) if union else 0.0


# --------------------------------------------------------------------------------------------------
# RLE <-> bounding-box crop, without decoding the whole image.


def rle_string_to_counts(counts: bytes) -> np.ndarray:
    """Decode pycocotools' compressed RLE string to run lengths (int64, first run is background).

    The format: each count is written 5 bits per character (``chr(48 + bits)``, bit 0x20 = more
    characters follow, bit 0x10 of the last character = negative), and counts from the fourth on are
    stored as the difference to the count two places earlier.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = np.flatnonzero((c & 0x20) == 0)  # last character of each number
    starts = np.concatenate(([0], last[:-1] + 1))
    lengths = last - starts + 1
    position = np.arange(c.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((c & 0x1F) << (5 * position), starts)
    negative = (c[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])  # sign extension
    values[2::2] = np.cumsum(values[2::2])
    values[1::2] = np.cumsum(values[1::2])
    return values


# Working in column-major order: a COCO RLE runs down the columns of an H x W mask, i.e. along the rows
# of its W x H transpose. Crops below are kept transposed (one row per mask column); erosion by a square
# does not care about the transpose, so nothing is ever transposed back.


def _decode_columns(counts: np.ndarray, height: int, width: int) -> Optional[Tuple[np.ndarray, int, int]]:
    """Run lengths -> ``(crop_t, x0, y0)``: bool ``w x h`` transposed bounding-box crop, or ``None`` if empty."""
    total = int(counts.sum())
    if total != height * width:
        raise ValueError(f"RLE counts sum to {total}, not {height}x{width}={height * width}")
    fg = np.flatnonzero(counts[1::2]) * 2 + 1  # indices of non-empty foreground runs
    if fg.size == 0:
        return None
    ends = np.cumsum(counts)
    first, last = int(fg[0]), int(fg[-1])
    begin, end = int(ends[first] - counts[first]), int(ends[last])
    x0, x1 = begin // height, (end - 1) // height + 1
    runs = counts[first : last + 1]
    values = np.zeros(runs.size, dtype=np.uint8)
    values[0::2] = 1  # runs alternate foreground, background, ..., foreground
    flat = np.zeros((x1 - x0) * height, dtype=np.uint8)
    flat[begin - x0 * height : end - x0 * height] = np.repeat(values, runs)
    columns = flat.reshape(x1 - x0, height)
    rows = np.flatnonzero(columns.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    return np.ascontiguousarray(columns[:, y0:y1]).view(bool), x0, y0


def _encode_columns(crop_t: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Run lengths (int64, canonical like ``pycocotools.mask.encode``) of the ``height x width`` mask that is
    zero outside the transposed bool crop ``crop_t`` (``w x h``) whose first column is ``x0``, row ``y0``."""
    w, h = crop_t.shape
    padded = np.zeros((w, h + 2), dtype=np.int8)  # zero-padded column ends
    padded[:, 1:-1] = crop_t
    col, row = np.nonzero(np.diff(padded, axis=1))  # alternating run starts and ends, column-major
    edges = (x0 + col) * height + y0 + row
    if edges.size:
        # A run ending at the bottom of a column and one starting at the top of the next are one run.
        starts, stops = edges[0::2], edges[1::2]
        touching = stops[:-1] == starts[1:]
        if touching.any():
            starts = starts[np.concatenate(([True], ~touching))]
            stops = stops[np.concatenate((~touching, [True]))]
            edges = np.stack([starts, stops], axis=1).reshape(-1)
    counts = np.diff(np.concatenate(([0], edges, [height * width])))
    # pycocotools writes no trailing empty background run when the mask reaches the last pixel.
    return counts[:-1] if counts.size > 1 and counts[-1] == 0 else counts


def counts_to_crop(counts: np.ndarray, height: int, width: int) -> Optional[Tuple[np.ndarray, int, int]]:
    """Decode run lengths of an ``height x width`` mask into its bounding-box crop.

    Returns ``(crop, x0, y0)`` with ``crop`` bool ``h x w`` (the tight box), or ``None`` for an empty mask.
    """
    decoded = _decode_columns(counts, height, width)
    return None if decoded is None else (decoded[0].T, decoded[1], decoded[2])


def crop_to_counts(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Run lengths (int64, canonical like ``pycocotools.mask.encode``) of an ``height x width`` mask that
    is zero outside the bool ``crop`` (``h x w``) placed at column ``x0``, row ``y0``."""
    return _encode_columns(crop.T, x0, y0, height, width)


def _compress(counts: np.ndarray, height: int, width: int) -> bytes:
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.astype(np.uint32)}, height, width)
    return rle["counts"]


def boundary_counts(counts: bytes, height: int, width: int, dilation: int) -> bytes:
    """Compressed RLE string of the boundary band of the mask given as a compressed RLE string."""
    decoded = _decode_columns(rle_string_to_counts(counts), height, width)
    if decoded is None:
        return _compress(np.array([height * width]), height, width)
    crop_t, x0, y0 = decoded
    eroded = _erode_zero_outside(crop_t.view(np.uint8), dilation).view(bool)
    return _compress(_encode_columns(crop_t & ~eroded, x0, y0, height, width), height, width)


def rle_to_boundary(rle: Dict[str, Any], dilation_ratio: float = DEFAULT_DILATION_RATIO) -> Dict[str, Any]:
    """Boundary band of a compressed RLE (``counts`` str or bytes) as a compressed RLE with bytes counts."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    return {"size": [h, w], "counts": boundary_counts(counts, h, w, boundary_dilation(h, w, dilation_ratio))}


# --------------------------------------------------------------------------------------------------
# Many boundaries, over processes.

_Job = Tuple[bytes, int, int, int]


def _boundary_chunk(jobs: Sequence[_Job]) -> List[bytes]:
    return [boundary_counts(*job) for job in jobs]


def compute_boundaries(
    rles: Sequence[Dict[str, Any]],
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    *,
    workers: int = 1,
    chunk_size: int = 512,
    progress: bool = True,
    desc: str = "boundaries",
) -> List[Dict[str, Any]]:
    """Boundary RLE (bytes counts) of each compressed RLE, in order, over ``workers`` processes."""
    jobs: List[_Job] = []
    for rle in rles:
        h, w = (int(s) for s in rle["size"])
        counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
        jobs.append((counts, h, w, boundary_dilation(h, w, dilation_ratio)))
    chunks = [jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    bar = tqdm(total=len(jobs), desc=desc, unit="mask", disable=not progress or not jobs, leave=False)
    out: List[bytes] = []
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            out.extend(_boundary_chunk(chunk))
            bar.update(len(chunk))
    else:
        # fork: children inherit the imported modules, so starting them costs milliseconds.
        context = multiprocessing.get_context("fork")
        with context.Pool(processes=workers) as pool:
            for result in pool.imap(_boundary_chunk, chunks):
                out.extend(result)
                bar.update(len(result))
    bar.close()
    return [{"size": [job[1], job[2]], "counts": counts} for job, counts in zip(jobs, out)]


class BoundaryIoUTable:
    """Boundary-AP IoUs for a set of (detections, ground truths) groups, each mask's boundary computed
    once.

    Use: :meth:`add` every group (detections already in matching order), then :meth:`compute` once, then
    :meth:`ious` per group. The IoU is ``min(mask IoU, boundary IoU)`` for non-crowd ground truth and
    mask IoU for crowd ground truth. Boundaries are computed only for masks in a pair whose mask IoU
    reaches ``min_iou``: below it ``min(mask IoU, boundary IoU)`` is below it as well, so with ``min_iou``
    = the lowest matching threshold such a pair can never match, and its entry keeps the mask IoU (an
    upper bound that matching treats identically). Evaluators pass the lowest IoU threshold;
    ``min_iou=0`` computes the exact value of every entry (pairs with mask IoU 0 have boundary IoU 0).

    ``gt_cache`` (optional dict) keeps ground-truth boundaries between evaluations, keyed by annotation id;
    pass the same dict only with the same ground truth (e.g. coarse vs refined comparisons). Detection
    boundaries are never shared: result ids restart at 1 in every result file.
    """

    def __init__(self, dilation_ratio: float = DEFAULT_DILATION_RATIO, *, workers: int = 1,
                 progress: bool = True, gt_cache: Optional[Dict[Any, Dict[str, Any]]] = None,
                 min_iou: float = 0.0):
        if not 0 < dilation_ratio < float("inf"):
            raise ValueError(f"dilation_ratio must be a number greater than 0, got {dilation_ratio}")
        self.dilation_ratio = dilation_ratio
        self.min_iou = min_iou
        self.workers = workers
        self.progress = progress
        self._dt_boundaries: Dict[Any, Dict[str, Any]] = {}
        self._gt_boundaries: Dict[Any, Dict[str, Any]] = gt_cache if gt_cache is not None else {}
        self._groups: Dict[Any, Tuple[np.ndarray, List[Tuple[str, Any]], List[Tuple[str, Any]], np.ndarray]] = {}
        self._pending: Dict[Tuple[str, Any], Dict[str, Any]] = {}
        self.n_computed = 0
        self.n_masks = 0

    def add(self, key: Any, dts: Sequence[Dict[str, Any]], gts: Sequence[Dict[str, Any]],
            iscrowd: Sequence[int]) -> None:
        """Register a group: ``dts`` and ``gts`` are annotation dicts with RLE ``segmentation`` and ``id``."""
        mask_ious = np.asarray(mask_utils.iou([d["segmentation"] for d in dts],
                                              [g["segmentation"] for g in gts], list(iscrowd)), dtype=np.float64)
        crowd = np.asarray(iscrowd, dtype=bool)
        overlap = mask_ious >= self.min_iou if self.min_iou > 0 else mask_ious > 0
        overlap[:, crowd] = False
        dt_keys = [("dt", d["id"]) for d in dts]
        gt_keys = [("gt", g["id"]) for g in gts]
        self.n_masks += len(dts) + int((~crowd).sum())
        for i in np.flatnonzero(overlap.any(axis=1)):
            self._want(dt_keys[i], dts[i]["segmentation"])
        for j in np.flatnonzero(overlap.any(axis=0)):
            self._want(gt_keys[j], gts[j]["segmentation"])
        self._groups[key] = (mask_ious, dt_keys, gt_keys, overlap)

    def __contains__(self, key: Any) -> bool:
        return key in self._groups

    def _want(self, key: Tuple[str, Any], rle: Dict[str, Any]) -> None:
        if key[1] not in self._store(key[0]):
            self._pending[key] = rle

    def _store(self, kind: str) -> Dict[Any, Dict[str, Any]]:
        return self._dt_boundaries if kind == "dt" else self._gt_boundaries

    def boundary(self, key: Tuple[str, Any]) -> Dict[str, Any]:
        """Boundary RLE of ``("dt" | "gt", annotation id)`` (after :meth:`compute`)."""
        return self._store(key[0])[key[1]]

    def compute(self) -> None:
        """Compute every boundary still missing (parallel over ``workers`` processes)."""
        keys = list(self._pending)
        rles = compute_boundaries([self._pending[k] for k in keys], self.dilation_ratio,
                                  workers=self.workers, progress=self.progress, desc="boundary bands")
        for key, rle in zip(keys, rles):
            self._store(key[0])[key[1]] = rle
        self.n_computed += len(keys)
        self._pending.clear()

    def ious(self, key: Any) -> np.ndarray:
        """``min(mask IoU, boundary IoU)`` (crowd columns: mask IoU), float64 ``D x G``."""
        mask_ious, dt_keys, gt_keys, overlap = self._groups[key]
        out = mask_ious.copy()
        rows, cols = np.flatnonzero(overlap.any(axis=1)), np.flatnonzero(overlap.any(axis=0))
        if rows.size:
            b = np.asarray(mask_utils.iou([self.boundary(dt_keys[i]) for i in rows],
                                          [self.boundary(gt_keys[j]) for j in cols], [0] * cols.size))
            block = np.ix_(rows, cols)
            out[block] = np.minimum(mask_ious[block], b.reshape(rows.size, cols.size))
        return out
