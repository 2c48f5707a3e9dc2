"""SAM's training losses on low-res logits: focal, Dice, and the IoU head's MSE (Phoenix C.1.5: 20 : 1
focal : Dice; SUM B.1: IoU MSE weight 1), per sample, over the pixels of the image (SAM's padding does not
count), optionally weighted by a certainty map (SUM Sec. 3.2.1, eqs. 1-2).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
               certainty: Optional[torch.Tensor] = None, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per sample, mean over the valid pixels (float ``B``).

    Args:
        logits: float ``B x ... x h x w`` (extra dims, e.g. candidates, are kept: the result is ``B x ...``).
        targets: bool or float ``B x h x w`` (broadcast over the extra dims).
        valid: bool ``B x h x w``, the pixels that count.
        certainty: float ``B x h x w`` per-pixel weight c (SUM eq. 1); None: 1.
    """
    extra = logits.dim() - targets.dim()
    shape = (targets.shape[0],) + (1,) * extra + tuple(targets.shape[1:])
    t = targets.float().reshape(shape).expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    weight = valid.float() if certainty is None else valid.float() * certainty.float()
    weight = weight.reshape(shape)
    count = valid.float().flatten(1).sum(1).clamp(min=1.0).reshape((-1,) + (1,) * extra)
    return (loss * weight).flatten(-2).sum(-1) / count


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
              certainty: Optional[torch.Tensor] = None, threshold: float = 0.6) -> torch.Tensor:
    """``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)`` per sample over the valid pixels (float ``B x ...``); with a
    certainty map, only pixels with ``c > threshold`` count (SUM eq. 2, θ = 0.6)."""
    extra = logits.dim() - targets.dim()
    shape = (targets.shape[0],) + (1,) * extra + tuple(targets.shape[1:])
    keep = valid if certainty is None else valid & (certainty > threshold)
    keep = keep.float().reshape(shape)
    p = torch.sigmoid(logits) * keep
    t = targets.float().reshape(shape) * keep
    numerator = 2 * (p * t).flatten(-2).sum(-1) + 1
    denominator = p.flatten(-2).sum(-1) + t.flatten(-2).sum(-1) + 1
    return 1 - numerator / denominator


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
