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
    """One axis of a composed chain, stored sparsely: every output index reads at most K consecutive
    input indices (a chain of bilinear steps is banded and monotone).

    Attributes:
        index: int64 ``out x K``: the input indices each output reads (unused slots repeat the first).
        weight: float32 ``out x K``: their weights (0 in unused slots).
        first, last: int64 ``out``: the first and last input index with nonzero weight.
    """

    index: torch.Tensor
    weight: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, device) -> "AxisMap":
        nonzero = matrix != 0
        positions = torch.arange(matrix.shape[1]).expand_as(matrix)
        first = torch.where(nonzero, positions, matrix.shape[1]).min(dim=1).values
        last = torch.where(nonzero, positions, -1).max(dim=1).values
        taps = int((last - first).max()) + 1
        index = (first[:, None] + torch.arange(taps)).clamp(max=matrix.shape[1] - 1)
        weight = torch.gather(matrix, 1, index) * (first[:, None] + torch.arange(taps) <= last[:, None])
        return cls(index.to(device), weight.float().to(device), first, last)

    @property
    def size(self) -> Tuple[int, int]:
        """``(out, in)``."""
        return self.index.shape[0], int(self.last.max()) + 1

    def outputs_touching(self, lo: int, hi: int) -> Tuple[int, int]:
        """Inclusive range of output indices whose input taps intersect ``[lo, hi]`` (``(0, -1)``: none)."""
        touching = torch.nonzero((self.first <= hi) & (self.last >= lo)).flatten()
        if touching.numel() == 0:  # a downsampling chain may skip an input index altogether
            return 0, -1
        return int(touching[0]), int(touching[-1])

    def inputs_of(self, lo: int, hi: int) -> Tuple[int, int]:
        """Inclusive range of input indices read by outputs ``[lo, hi]``."""
        return int(self.first[lo : hi + 1].min()), int(self.last[lo : hi + 1].max())

    def apply(self, x: torch.Tensor, dim: int, start: int, outputs: slice = slice(None)) -> torch.Tensor:
        """Map dimension ``dim`` of ``x``, which holds input indices ``start, start + 1, ...``; inputs
        outside that range count as 0. Returns ``x`` with that dimension replaced by ``outputs``."""
        index = self.index[outputs] - start
        weight = self.weight[outputs] * ((index >= 0) & (index < x.shape[dim]))
        index = index.clamp(0, x.shape[dim] - 1)
        shape = [1] * x.dim()
        shape[dim] = index.shape[0]
        out = None
        for k in range(index.shape[1]):
            term = x.index_select(dim, index[:, k]) * weight[:, k].view(shape)
            out = term if out is None else out.add_(term)
        return out


def mapped_norm(values: torch.Tensor, rows: AxisMap, cols: AxisMap, max_floats: int = 1 << 23) -> torch.Tensor:
    """float32 ``out_h x out_w``: the L2 norm over channels of the chain applied to each channel of
    ``values`` (float ``C x h x w``), without materialising the ``C x out_h x out_w`` result.

    The chain is linear, so the squared norm at an output is the quadratic form ``sum_ab w_a w_b <v_a, v_b>``
    over the input cells a, b it reads. The taps of an axis are consecutive, so only Gram products of
    cells at most ``K - 1`` apart are needed: ``C`` times fewer multiplications than resizing every
    channel. Computed in float64 on the CPU (the same values whatever device ``values`` is on), within
    ~1e-7 relative of the exact norm (norming a float32 resize: up to ~1e-5). ``max_floats`` bounds the
    float64 temporaries of the output stage.
    """
    features = values.detach().to("cpu", torch.float64)
    row_index, row_weight = rows.index.cpu(), rows.weight.cpu().double()
    col_index, col_weight = cols.index.cpu(), cols.weight.cpu().double()
    reach_r, reach_c = row_index.shape[1] - 1, col_index.shape[1] - 1
    height, width = features.shape[1:]
    padded = torch.nn.functional.pad(features, (reach_c, reach_c, reach_r, reach_r))
    # gram[reach_r + dr, reach_c + dc, i, j] = <v[i, j], v[i + dr, j + dc]> (0 for a neighbour outside).
    gram = torch.empty((2 * reach_r + 1, 2 * reach_c + 1, height, width), dtype=torch.float64)
    for dr in range(-reach_r, reach_r + 1):
        for dc in range(-reach_c, reach_c + 1):
            neighbour = padded[:, reach_r + dr : reach_r + dr + height, reach_c + dc : reach_c + dc + width]
            gram[reach_r + dr, reach_c + dc] = (features * neighbour).sum(0)
    # Rows first, on the input columns: by_row[reach_c + dc, y, j] = sum_kl w_k w_l gram[i_l - i_k, dc, i_k, j].
    by_row = torch.zeros((2 * reach_c + 1, row_index.shape[0], width), dtype=torch.float64)
    by_offset = gram.permute(0, 2, 1, 3)  # dr, i, dc, j
    for k in range(row_index.shape[1]):
        for l in range(row_index.shape[1]):
            taken = by_offset[reach_r + row_index[:, l] - row_index[:, k], row_index[:, k]]  # y, dc, j
            by_row += taken.permute(1, 0, 2) * (row_weight[:, k] * row_weight[:, l])[None, :, None]
    norm = torch.empty((row_index.shape[0], col_index.shape[0]), dtype=torch.float32)
    chunk = max(1, max_floats // (4 * col_index.shape[0]))
    for y1 in range(0, norm.shape[0], chunk):
        ys = torch.arange(y1, min(y1 + chunk, norm.shape[0]))[:, None]
        squared = torch.zeros((ys.shape[0], norm.shape[1]), dtype=torch.float64)
        for k in range(col_index.shape[1]):
            for l in range(col_index.shape[1]):
                offset = (reach_c + col_index[:, l] - col_index[:, k])[None, :]
                squared += by_row[offset, ys, col_index[:, k][None, :]] * (col_weight[:, k] * col_weight[:, l])
        norm[y1 : y1 + chunk] = squared.clamp_(min=0).sqrt_()
    return norm.to(values.device)


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
            passes through unchanged and only ``values - constant`` needs mapping).

    Returns:
        float32 ``out_h x out_w``, the whole output frame.
    """
    window, (x0, y0) = box_window(rows, cols, values.float() - constant, box)
    out = torch.zeros((rows.size[0], cols.size[0]), dtype=window.dtype, device=window.device)
    out[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out + constant if constant else out


def box_window(rows: AxisMap, cols: AxisMap, values: torch.Tensor, box) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The chain applied to an input that is 0 outside ``box``, on the outputs the box reaches.

    Args:
        values: float ``... x h x w``, the input inside the inclusive ``box`` = (x1, y1, x2, y2).

    Returns:
        float32 ``... x h' x w'`` window of the output frame and its top-left ``(x0, y0)``; every other
        output is 0. The window's values are those of the whole-frame computation, bit for bit (each
        output is computed from the same taps in the same order).
    """
    x1, y1 = int(box[0]), int(box[1])
    r1, r2 = rows.outputs_touching(y1, y1 + values.shape[-2] - 1)
    c1, c2 = cols.outputs_touching(x1, x1 + values.shape[-1] - 1)
    window = cols.apply(rows.apply(values.float(), -2, y1, slice(r1, r2 + 1)), -1, x1, slice(c1, c2 + 1))
    return window, (c1, r1)


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
    if r2 < r1 or c2 < c1:  # positive only where the chain crops (SAM's padding)
        return None, None
    return output_window(rows, cols, logits, (c1, r1, c2, r2)) > 0, (c1, r1)


def output_window(rows: AxisMap, cols: AxisMap, values: torch.Tensor, box) -> torch.Tensor:
    """The chain's output on the inclusive output ``box`` = (x1, y1, x2, y2) only, read from the inputs
    those outputs need.

    Args:
        values: float ``h x w``, the whole input frame.

    Returns:
        float32 ``(y2 - y1 + 1) x (x2 - x1 + 1)``, equal to the same window of the full output.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    i1, i2 = rows.inputs_of(y1, y2)
    j1, j2 = cols.inputs_of(x1, x2)
    window = rows.apply(values[i1 : i2 + 1, j1 : j2 + 1], 0, i1, slice(y1, y2 + 1))
    return cols.apply(window, 1, j1, slice(x1, x2 + 1))
