"""Gaussian-style dense mask prompts (SAMRefiner, Sec. 3.2).

The coarse mask enters SAM's mask input as ``+strength`` inside and ``-strength`` outside, shaped inside
by a Gaussian-like weight that peaks at the mask's deepest point, so SAM trusts the interior more than
the (noisy) boundary.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..resize import AxisMap, box_window
from .points import InteriorDistance

# ``binary`` is no Gaussian: the plain +-strength encoding of a binary mask (the mask prompt trained
# refiners default to, PHOENIX_FACTS "model"); :func:`dense_mask_prompt` takes None weights for it.
GAUSSIAN_KINDS = ("distance", "spatial", "binary")


def gaussian_weights(depth: InteriorDistance, area: int, gamma: float, kind: str = "distance") -> np.ndarray:
    """float32 ``h x w`` weights on the mask's box crop: 0 outside the mask, in (0, 1] inside.

    ``distance`` (the authors' code, our default): ``exp(-(d - d_max)^2 / max(area / gamma, 1))`` with d the
    distance to the background. ``spatial`` (the paper's eq. 3): ``exp(-r^2 / (area * gamma))`` with r the
    distance to the positive point (the deepest pixel).
    """
    if kind == "distance":
        spread = max(area / gamma, 1.0)
        squared = depth.squared
        if squared is not None and squared.size and squared.max() < squared.size:
            # Exact distances are square roots of a few distinct integers: compute each weight once, with
            # the same float64 operations as below (so the same values), and look them up.
            distinct = np.sqrt(np.arange(int(squared.max()) + 1, dtype=np.float64))
            table = np.exp(-((distinct - distinct[-1]) ** 2) / spread)  # distinct[-1] == values.max()
            table[0] = 0.0  # background
            return table.astype(np.float32)[squared.astype(np.intp)]
        values = depth.values
        weights = np.exp(-((values - values.max()) ** 2) / spread)
    elif kind == "spatial":
        values = depth.values
        peak_x, peak_y, _ = depth.peak
        ys, xs = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
        squared = (xs + depth.origin[0] - peak_x) ** 2 + (ys + depth.origin[1] - peak_y) ** 2
        weights = np.exp(-squared / (area * gamma))
    else:
        raise ValueError(f"gaussian must be one of {GAUSSIAN_KINDS}, got {kind!r}")
    return np.where(values > 0, weights, 0.0).astype(np.float32)


def dense_mask_prompt(
    masks: Sequence[np.ndarray],
    weights: Sequence[Optional[np.ndarray]],
    boxes: np.ndarray,
    amplitude: np.ndarray,
    frame: Tuple[AxisMap, AxisMap],
) -> torch.Tensor:
    """SAM mask inputs for coarse masks, as the authors' ``extract_mask`` builds them, per mask.

    The authors resize full-size -1/+1 masks and Gaussian maps to the resized-image frame, pad them to
    the encoder square (with -1 and 0) and resize to the mask-input size; ``frame`` is that chain
    (:func:`refine_hooks.resize.to_mask_input`), applied to each mask's box only.

    Args:
        masks: bool ``h_i x w_i`` crops of the coarse masks on their tight inclusive ``boxes`` (``N x 4``).
        weights: float32 ``h_i x w_i`` Gaussian weights on the same crops (0 outside each mask), or None
            for the plain binary encoding (+amplitude inside, -amplitude outside).
        amplitude: float32 ``N``: ``strength`` (ω), or 1 for masks whose box was expanded.
        frame: the original -> mask-input chain, on the device the prompts are wanted on.

    Returns:
        float32 ``N x 1 x m x m``: ``-amplitude`` on background, ``+amplitude * g`` inside.
    """
    rows, cols = frame
    device = rows.weight.device
    prompts = torch.empty((len(masks), 1, rows.size[0], cols.size[0]), device=device)
    for i, (mask, weight, box) in enumerate(zip(masks, weights, boxes)):
        # Outputs that no pixel of the box reaches are background: -amplitude (g = 0 there, factor 1).
        prompts[i, 0] = -float(amplitude[i])
        # The signed mask is -1 outside the box: map (mask * 2 - 1) - (-1) = 2 * mask, add -1 back. The
        # Gaussian rides along in the same call (same box, same arithmetic per value).
        channels = [torch.from_numpy(mask).to(device).float() * 2]
        if weight is not None:
            channels.append(torch.from_numpy(weight).to(device))
        mapped, (x0, y0) = box_window(rows, cols, torch.stack(channels), box)
        signed = mapped[0] + -1.0
        window = prompts[i, 0, y0 : y0 + mapped.shape[1], x0 : x0 + mapped.shape[2]]
        window.copy_(torch.where(signed > 0, float(amplitude[i]), -float(amplitude[i])))
        if weight is not None:
            window *= torch.where(mapped[1] > 0, mapped[1], 1.0)
    return prompts
