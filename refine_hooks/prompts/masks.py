"""Gaussian-style dense mask prompts (SAMRefiner, Sec. 3.2).

The coarse mask enters SAM's mask input as ``+strength`` inside and ``-strength`` outside, shaped inside
by a Gaussian-like weight that peaks at the mask's deepest point, so SAM trusts the interior more than
the (noisy) boundary.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .points import InteriorDistance

GAUSSIAN_KINDS = ("distance", "spatial")


def gaussian_weights(depth: InteriorDistance, area: int, gamma: float, kind: str = "distance") -> np.ndarray:
    """float32 ``h x w`` weights on the mask's box crop: 0 outside the mask, in (0, 1] inside.

    ``distance`` (the authors' code, our default): ``exp(-(d - d_max)^2 / max(area / gamma, 1))`` with d the
    distance to the background. ``spatial`` (the paper's eq. 3): ``exp(-r^2 / (area * gamma))`` with r the
    distance to the positive point (the deepest pixel).
    """
    values = depth.values
    inside = values > 0
    if kind == "distance":
        spread = max(area / gamma, 1.0)
        weights = np.exp(-((values - values.max()) ** 2) / spread)
    elif kind == "spatial":
        peak_x, peak_y, _ = depth.peak
        ys, xs = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
        squared = (xs + depth.origin[0] - peak_x) ** 2 + (ys + depth.origin[1] - peak_y) ** 2
        weights = np.exp(-squared / (area * gamma))
    else:
        raise ValueError(f"gaussian must be one of {GAUSSIAN_KINDS}, got {kind!r}")
    return np.where(inside, weights, 0.0).astype(np.float32)


def paste_crops(crops, origins, shape: Tuple[int, int]) -> np.ndarray:
    """float32 ``N x H x W`` zeros with each ``crops[i]`` placed at ``origins[i]`` = (x, y)."""
    canvas = np.zeros((len(crops),) + tuple(shape), dtype=np.float32)
    for i, (crop, (x, y)) in enumerate(zip(crops, origins)):
        canvas[i, y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return canvas


def dense_mask_prompt(
    masks: torch.Tensor,
    weights: torch.Tensor,
    amplitude: torch.Tensor,
    input_size: Tuple[int, int],
    image_size: int,
    mask_input_size: Tuple[int, int],
) -> torch.Tensor:
    """SAM mask inputs for coarse masks, built as the authors' ``extract_mask`` does, per mask.

    Args:
        masks: bool ``N x H x W`` coarse masks at the original size.
        weights: float32 ``N x H x W`` Gaussian weights (0 outside each mask).
        amplitude: float32 ``N``: ``strength`` (ω), or 1 for masks whose box was expanded.
        input_size: ``(h', w')`` of the resized image; ``image_size``: the square encoder input side.
        mask_input_size: ``(m, m)``, 4 x the embedding size.

    Returns:
        float32 ``N x 1 x m x m``: ``-amplitude`` on background, ``+amplitude * g`` inside.
    """
    signed = masks[:, None].float() * 2 - 1  # -1 / +1
    gauss = weights[:, None].float()
    pad = (0, image_size - input_size[1], 0, image_size - input_size[0])
    signed = F.interpolate(signed, input_size, mode="bilinear", align_corners=False)
    signed = F.interpolate(F.pad(signed, pad, value=-1.0), mask_input_size, mode="bilinear", align_corners=False)
    gauss = F.interpolate(gauss, input_size, mode="bilinear", align_corners=False)
    gauss = F.interpolate(F.pad(gauss, pad, value=0.0), mask_input_size, mode="bilinear", align_corners=False)
    amplitude = amplitude.float().view(-1, 1, 1, 1)
    signed = torch.where(signed > 0, amplitude, -amplitude)
    return signed * torch.where(gauss > 0, gauss, torch.ones_like(gauss))
