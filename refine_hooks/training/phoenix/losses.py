"""SAM's training losses on low-res logits: focal, Dice, and the IoU head's MSE (Phoenix C.1.5: 20 : 1
focal : Dice; SUM B.1: IoU MSE weight 1), per sample, over the pixels of the image (SAM's padding does not
count), optionally weighted by a certainty map (SUM Sec. 3.2.1, eqs. 1-2).
"""

from __future__ import annotations

from typing import Optional

import torch

from ...uncertainty.losses import ua_dice_loss, ua_focal_loss
from ...uncertainty.maps import DEFAULT_THETA


def _per_sample_shape(logits: torch.Tensor, targets: torch.Tensor):
    """The shape that broadcasts ``B x h x w`` maps over the extra dims of ``B x ... x h x w`` logits."""
    extra = logits.dim() - targets.dim()
    return extra, (targets.shape[0],) + (1,) * extra + tuple(targets.shape[1:])


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
               certainty: Optional[torch.Tensor] = None, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per sample, mean over the valid pixels (float ``B``): SUM's uncertainty-aware focal
    loss ``(1/m) Σ_i c_i l_focal(p_i, ŷ_i)`` (eq. 1, :func:`refine_hooks.uncertainty.ua_focal_loss`) with m the
    number of valid pixels and ``c = 0`` on SAM's padding.

    Args:
        logits: float ``B x ... x h x w`` (extra dims, e.g. candidates, are kept: the result is ``B x ...``).
        targets: bool or float ``B x h x w`` (broadcast over the extra dims).
        valid: bool ``B x h x w``, the pixels that count.
        certainty: float ``B x h x w`` per-pixel weight c (SUM eq. 1); None: 1.
    """
    extra, shape = _per_sample_shape(logits, targets)
    t = targets.float().reshape(shape).expand_as(logits)
    weight = valid.float() if certainty is None else valid.float() * certainty.float()
    weight = weight.reshape(shape).expand_as(logits)
    count = valid.float().flatten(1).sum(1).clamp(min=1.0).reshape((-1,) + (1,) * extra)
    per_pixel = ua_focal_loss(logits, t, weight, alpha=alpha, gamma=gamma, reduction="none")
    return per_pixel.flatten(-2).sum(-1) / count


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
              certainty: Optional[torch.Tensor] = None, threshold: float = DEFAULT_THETA) -> torch.Tensor:
    """``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` per sample over the valid pixels (float ``B x ...``); with a
    certainty map, only pixels with ``c > threshold`` count: SUM's uncertainty-aware Dice (eq. 2, θ = 0.6,
    :func:`refine_hooks.uncertainty.ua_dice_loss`, ε = 1)."""
    _, shape = _per_sample_shape(logits, targets)
    kept = valid.float() if certainty is None else torch.where(valid, certainty.float(), torch.zeros_like(certainty, dtype=torch.float32))
    flat = (-1,) + tuple(logits.shape[-2:])
    per_mask = ua_dice_loss(logits.reshape(flat), targets.float().reshape(shape).expand_as(logits).reshape(flat),
                            kept.reshape(shape).expand_as(logits).reshape(flat), theta=threshold, eps=1.0)
    return per_mask.reshape(logits.shape[:-2])


def mask_ious(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with bool targets over valid pixels (float ``B x ...``, no gradient); 1 when
    both are empty (what SAM's IoU head should predict then)."""
    extra = logits.dim() - targets.dim()
    shape = (targets.shape[0],) + (1,) * extra + tuple(targets.shape[1:])
    masks = logits.detach() > 0
    t = targets.bool().reshape(shape)
    v = valid.reshape(shape)
    inter = (masks & t & v).flatten(-2).sum(-1).float()
    union = ((masks | t) & v).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
