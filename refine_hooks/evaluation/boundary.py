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
    characters follow, bit 0x10 of the last character = negative), and counts from the third on are
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


def _foreground_runs(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) column-major indices of the non-empty foreground runs, merged when
    touching (an uncompressed RLE may carry zero-length runs)."""
    ends = np.cumsum(counts)
    begins = ends - counts
    fg_begin, fg_end = begins[1::2], ends[1::2]
    keep = fg_end > fg_begin
    fg_begin, fg_end = fg_begin[keep], fg_end[keep]
    if fg_begin.size > 1:
        touching = fg_begin[1:] == fg_end[:-1]
        if touching.any():
            fg_begin = fg_begin[np.concatenate(([True], ~touching))]
            fg_end = fg_end[np.concatenate((~touching, [True]))]
    return fg_begin, fg_end


def counts_to_crop(counts: np.ndarray, height: int, width: int) -> Optional[Tuple[np.ndarray, int, int]]:
    """Decode run lengths of an ``height x width`` mask into its bounding-box crop.

    Returns ``(crop, x0, y0)`` with ``crop`` bool ``h x w`` (the tight box), or ``None`` for an empty mask.
    """
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {height}x{width}={height * width}")
    begin, end = _foreground_runs(counts)
    if begin.size == 0:
        return None
    # Split runs at column ends: one segment per (run, column).
    col_begin, col_last = begin // height, (end - 1) // height
    n_seg = col_last - col_begin + 1
    run_of_seg = np.repeat(np.arange(begin.size), n_seg)
    first_seg = np.cumsum(n_seg) - n_seg
    col = col_begin[run_of_seg] + (np.arange(run_of_seg.size) - first_seg[run_of_seg])
    row0 = np.maximum(begin[run_of_seg], col * height) - col * height
    row1 = np.minimum(end[run_of_seg], (col + 1) * height) - col * height
    x0, x1 = int(col.min()), int(col.max()) + 1
    y0, y1 = int(row0.min()), int(row1.max())
    # Segments in one column are at least one background pixel apart, so no two marks collide.
    marks = np.zeros((y1 - y0 + 1, x1 - x0), dtype=np.int8)
    marks[row0 - y0, col - x0] = 1
    marks[row1 - y0, col - x0] = -1
    crop = np.cumsum(marks, axis=0, dtype=np.int8)[:-1].astype(bool)
    return crop, x0, y0


def crop_to_counts(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Run lengths (int64, canonical like ``pycocotools.mask.encode``) of an ``height x width`` mask that
    is zero outside the bool ``crop`` placed at column ``x0``, row ``y0``."""
    h, w = crop.shape
    columns = np.zeros((w, h + 2), dtype=np.int8)  # one row per mask column, zero-padded ends
    columns[:, 1:-1] = crop.T
    col, row = np.nonzero(np.diff(columns, axis=1))  # alternating run starts and ends, column-major
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


def _compress(counts: np.ndarray, height: int, width: int) -> bytes:
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.astype(np.uint32)}, height, width)
    return rle["counts"]


def boundary_counts(counts: bytes, height: int, width: int, dilation: int) -> bytes:
    """Compressed RLE string of the boundary band of the mask given as a compressed RLE string."""
    decoded = counts_to_crop(rle_string_to_counts(counts), height, width)
    if decoded is None:
        return _compress(np.array([height * width]), height, width)
    crop, x0, y0 = decoded
    eroded = _erode_zero_outside(crop.view(np.uint8), dilation).view(bool)
    band = crop & ~eroded
    return _compress(crop_to_counts(band, x0, y0, height, width), height, width)


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
    :meth:`ious` per group. A pair with mask IoU 0 has boundary IoU 0 too (the boundary lies inside the
    mask), so boundaries are computed only for masks that overlap some partner: a detection far from
    every ground truth of its category never needs one. The result is exactly
    ``min(mask IoU, boundary IoU)`` for non-crowd ground truth and mask IoU for crowd ground truth.

    ``cache`` (optional dict) keeps boundaries between evaluations, keyed by ``(kind, annotation id)``;
    pass the same dict only with the same ground-truth object (e.g. coarse vs refined comparisons).
    """

    def __init__(self, dilation_ratio: float = DEFAULT_DILATION_RATIO, *, workers: int = 1,
                 progress: bool = True, cache: Optional[Dict[Tuple[str, int], Dict[str, Any]]] = None):
        self.dilation_ratio = dilation_ratio
        self.workers = workers
        self.progress = progress
        self.boundaries: Dict[Tuple[str, Any], Dict[str, Any]] = cache if cache is not None else {}
        self._groups: Dict[Any, Tuple[np.ndarray, List[Tuple[str, Any]], List[Tuple[str, Any]], np.ndarray]] = {}
        self._pending: Dict[Tuple[str, Any], Dict[str, Any]] = {}
        self.n_computed = 0
        self.n_masks = 0

    def add(self, key: Any, dts: Sequence[Dict[str, Any]], gts: Sequence[Dict[str, Any]],
            iscrowd: Sequence[int], gt_kind: str = "gt") -> None:
        """Register a group: ``dts`` and ``gts`` are annotation dicts with RLE ``segmentation`` and ``id``."""
        mask_ious = np.asarray(mask_utils.iou([d["segmentation"] for d in dts],
                                              [g["segmentation"] for g in gts], list(iscrowd)), dtype=np.float64)
        crowd = np.asarray(iscrowd, dtype=bool)
        overlap = mask_ious > 0
        overlap[:, crowd] = False
        dt_keys = [("dt", d["id"]) for d in dts]
        gt_keys = [(gt_kind, g["id"]) for g in gts]
        self.n_masks += len(dts) + int((~crowd).sum())
        for i in np.flatnonzero(overlap.any(axis=1)):
            self._want(dt_keys[i], dts[i]["segmentation"])
        for j in np.flatnonzero(overlap.any(axis=0)):
            self._want(gt_keys[j], gts[j]["segmentation"])
        self._groups[key] = (mask_ious, dt_keys, gt_keys, overlap)

    def __contains__(self, key: Any) -> bool:
        return key in self._groups

    def _want(self, key: Tuple[str, Any], rle: Dict[str, Any]) -> None:
        if key not in self.boundaries:
            self._pending[key] = rle

    def compute(self) -> None:
        """Compute every boundary still missing (parallel over ``workers`` processes)."""
        keys = list(self._pending)
        rles = compute_boundaries([self._pending[k] for k in keys], self.dilation_ratio,
                                  workers=self.workers, progress=self.progress, desc="boundary bands")
        self.boundaries.update(zip(keys, rles))
        self.n_computed += len(keys)
        self._pending.clear()

    def ious(self, key: Any) -> np.ndarray:
        """``min(mask IoU, boundary IoU)`` (crowd columns: mask IoU), float64 ``D x G``."""
        mask_ious, dt_keys, gt_keys, overlap = self._groups[key]
        out = mask_ious.copy()
        rows, cols = np.flatnonzero(overlap.any(axis=1)), np.flatnonzero(overlap.any(axis=0))
        if rows.size:
            b = np.asarray(mask_utils.iou([self.boundaries[dt_keys[i]] for i in rows],
                                          [self.boundaries[gt_keys[j]] for j in cols], [0] * cols.size))
            block = np.ix_(rows, cols)
            out[block] = np.minimum(mask_ious[block], b.reshape(rows.size, cols.size))
        return out
