"""Bilinear resizes, pads and crops between SAM's frames, as small per-axis matrices.

SAMRefiner moves masks between the original image and SAM's frames several times per iteration:
original -> resized (h', w') -> padded square -> mask-input size for prompts, and the reverse for
outputs. Each step is ``F.interpolate(mode="bilinear", align_corners=False)``, a pad or a crop: linear
and separable, so a whole chain is ``Ry @ X @ Rx^T`` with two small matrices composed once per image.
Applied to a mask's bounding box only, the cost follows the object's size, not the image's, and no
full-size intermediate frame is ever materialised. Results equal the ``F.interpolate`` chain up to
float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch


def bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """float64 ``out x in`` matrix of 1-D ``F.interpolate(mode="bilinear", align_corners=False)``."""
    scale = in_size / out_size
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = source - low
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


@dataclasses.dataclass
class AxisMap:
    """One axis of a composed chain: ``matrix`` (``out x in``) and, per output index, the first and last
    input index with nonzero weight (the chain is banded and monotone)."""

    matrix: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, device) -> "AxisMap":
        nonzero = matrix != 0
        index = torch.arange(matrix.shape[1]).expand_as(matrix)
        first = torch.where(nonzero, index, matrix.shape[1]).min(dim=1).values
        last = torch.where(nonzero, index, -1).max(dim=1).values
        return cls(matrix.float().to(device), first, last)

    def outputs_touching(self, lo: int, hi: int) -> Tuple[int, int]:
        """Inclusive range of output indices whose input taps intersect ``[lo, hi]``."""
        touching = torch.nonzero((self.first <= hi) & (self.last >= lo)).flatten()
        return int(touching[0]), int(touching[-1])

    def inputs_of(self, lo: int, hi: int) -> Tuple[int, int]:
        """Inclusive range of input indices read by outputs ``[lo, hi]``."""
        return int(self.first[lo : hi + 1].min()), int(self.last[lo : hi + 1].max())


def _map(parts, device) -> Tuple[AxisMap, AxisMap]:
    return tuple(AxisMap.from_matrix(m, device) for m in parts)


def to_mask_input(original_size, input_size, image_size: int, mask_input_size, device="cpu") -> Tuple[AxisMap, AxisMap]:
    """Original frame -> SAM's mask-input frame: resize to ``input_size``, pad bottom/right to the
    ``image_size`` square, resize to ``mask_input_size`` (the authors' ``extract_mask``)."""
    parts = []
    for axis in range(2):
        to_input = bilinear_matrix(original_size[axis], input_size[axis])
        to_mask = bilinear_matrix(image_size, mask_input_size[axis])[:, : input_size[axis]]
        parts.append(to_mask @ to_input)
    return _map(parts, device)


def from_low_res(original_size, input_size, image_size: int, low_res_size, device="cpu") -> Tuple[AxisMap, AxisMap]:
    """SAM's low-res logits -> original frame, as ``Sam.postprocess_masks``: resize to the ``image_size``
    square, crop to ``input_size``, resize to ``original_size``."""
    parts = []
    for axis in range(2):
        to_square = bilinear_matrix(low_res_size[axis], image_size)[: input_size[axis]]
        to_original = bilinear_matrix(input_size[axis], original_size[axis])
        parts.append(to_original @ to_square)
    return _map(parts, device)


def resize_map(in_size, out_size, device="cpu") -> Tuple[AxisMap, AxisMap]:
    """A plain bilinear resize from ``in_size`` to ``out_size`` (both ``(h, w)``)."""
    return _map([bilinear_matrix(in_size[a], out_size[a]) for a in range(2)], device)


def apply_to_box(rows: AxisMap, cols: AxisMap, values: torch.Tensor, box, constant: float = 0.0) -> torch.Tensor:
    """The chain applied to an input that equals ``constant`` outside ``box``.

    Args:
        values: float ``h x w``, the input inside the inclusive ``box`` = (x1, y1, x2, y2).
        constant: the input's value everywhere else (every row of a chain sums to 1, so a constant
            passes through unchanged and only ``values - constant`` needs multiplying).

    Returns:
        float32 ``out_h x out_w``, the whole output frame.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    shifted = values.float() - constant
    out = rows.matrix[:, y1 : y2 + 1] @ shifted @ cols.matrix[:, x1 : x2 + 1].T
    return out + constant if constant else out


def positive_window(rows: AxisMap, cols: AxisMap, logits: torch.Tensor):
    """Threshold the chain's output of ``logits`` at 0, computing only where it can be positive.

    Weights are non-negative, so an output pixel all of whose taps are <= 0 is <= 0: only outputs
    touching the bounding box of the positive inputs are computed, from every input they read.

    Args:
        logits: float ``h x w`` in the chain's input frame.

    Returns:
        ``(window, (x0, y0))``: bool window of the output frame and its top-left corner, or
        ``(None, None)`` when nothing is positive.
    """
    positive = logits > 0
    if not bool(positive.any()):
        return None, None
    ys = torch.nonzero(positive.any(dim=1)).flatten()
    xs = torch.nonzero(positive.any(dim=0)).flatten()
    r1, r2 = rows.outputs_touching(int(ys[0]), int(ys[-1]))
    c1, c2 = cols.outputs_touching(int(xs[0]), int(xs[-1]))
    i1, i2 = rows.inputs_of(r1, r2)
    j1, j2 = cols.inputs_of(c1, c2)
    window = rows.matrix[r1 : r2 + 1, i1 : i2 + 1] @ logits[i1 : i2 + 1, j1 : j2 + 1] @ cols.matrix[c1 : c2 + 1, j1 : j2 + 1].T
    return window > 0, (c1, r1)
