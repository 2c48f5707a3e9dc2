"""Uncertainty-aware losses and prompt sampling of SUM (Sec. 3.2.1-3.2.2), framework-free (torch only).

Every function takes the certainty ``c = 1 − u`` per pixel (:mod:`.maps`); ``certainty=None`` means
``c = 1`` everywhere, and with ``c = 1`` each loss is its plain counterpart bit for bit (same operations
in the same order; the tests compare with torchvision's focal loss and MMDetection's / Detectron2's own
losses). Pixels with ``c = 0`` contribute nothing, to the loss or its gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .maps import DEFAULT_THETA

_REDUCTIONS = ("mean", "none", "per_mask")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "per_mask":
        return loss.flatten(1).mean(1)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _weighted(loss: torch.Tensor, certainty: Optional[torch.Tensor]) -> torch.Tensor:
    if certainty is None:
        return loss
    if certainty.shape != loss.shape:
        raise ValueError(f"certainty has shape {tuple(certainty.shape)}, the loss {tuple(loss.shape)}")
    return loss * certainty.to(loss.dtype)


def ua_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, certainty: Optional[torch.Tensor] = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Uncertainty-aware binary cross-entropy: per-pixel BCE weighted by ``c``, averaged over all pixels
    (SUM eq. 1 with BCE in place of focal; what Mask R-CNN-style mask heads train with).

    Args:
        logits, targets, certainty: float, the same shape (``N x ...``); targets in [0, 1].
        reduction: ``mean`` (over every pixel, as eq. 1's 1/m), ``per_mask`` (``N``) or ``none``.
    """
    if certainty is not None and reduction == "mean":
        # The same call as the plain loss with weight ones would be: F applies the weight before the mean.
        return F.binary_cross_entropy_with_logits(logits, targets, weight=certainty.to(logits.dtype), reduction="mean")
    return _reduce(_weighted(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), certainty), reduction)


def ua_focal_loss(logits: torch.Tensor, targets: torch.Tensor, certainty: Optional[torch.Tensor] = None, *,
                  alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Uncertainty-aware sigmoid focal loss, SUM eq. 1: ``(1/m) Σ_i c_i · l_focal(p_i, ŷ_i)``.

    ``l_focal`` is the sigmoid focal loss of Lin et al. as SAM trains with it (and torchvision's
    ``sigmoid_focal_loss``): ``α_t (1 − p_t)^γ · BCE``; ``alpha < 0`` leaves out ``α_t``.

    Args:
        logits, targets, certainty: float, the same shape.
        reduction: ``mean`` over every pixel (eq. 1), ``per_mask`` or ``none``.
    """
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(_weighted(loss, certainty), reduction)


def ua_dice_loss(inputs: torch.Tensor, targets: torch.Tensor, certainty: Optional[torch.Tensor] = None, *,
                 theta: float = DEFAULT_THETA, eps: float = 1.0, sigmoid: bool = True) -> torch.Tensor:
    """Uncertainty-aware Dice, SUM eq. 2: Dice over the pixels with ``c > θ`` only (θ = 0.6, B.1)::

        1 − (2 Σ ŷ_i p_i I[c_i > θ] + ε) / (Σ (ŷ_i + p_i) I[c_i > θ] + ε)

    The sum in the denominator is taken as ``Σ p I + Σ ŷ I`` (MMDetection's ``naive_dice`` and SAM's
    order), so that ``c = 1`` gives their value exactly.

    Args:
        inputs: float ``N x ...`` logits (``sigmoid=True``) or probabilities.
        targets, certainty: float, the same shape.
        eps: ε (1 in SAM, SAM-HQ and Mask2Former).

    Returns:
        float ``N``: one loss per mask (the caller reduces: mean, or sum / number of masks).
    """
    probability = inputs.sigmoid() if sigmoid else inputs
    probability = probability.flatten(1)
    targets = targets.flatten(1).to(probability.dtype)
    if certainty is not None:
        if certainty.shape != inputs.shape:
            raise ValueError(f"certainty has shape {tuple(certainty.shape)}, the inputs {tuple(inputs.shape)}")
        keep = (certainty.flatten(1) > theta).to(probability.dtype)
        intersection = torch.sum(probability * targets * keep, 1)
        predicted = torch.sum(probability * keep, 1)
        labelled = torch.sum(targets * keep, 1)
    else:
        intersection = torch.sum(probability * targets, 1)
        predicted = torch.sum(probability, 1)
        labelled = torch.sum(targets, 1)
    return 1 - (2 * intersection + eps) / (predicted + labelled + eps)


def certainty_from_resampled_levels(levels: torch.Tensor) -> torch.Tensor:
    """Certainty ``c = 1 − level / 255`` of uncertainty levels after a resampling (RoIAlign, point sampling),
    as float in [0, 1] rounded to 1/65536.

    The levels are 8-bit, so the rounding loses nothing; it keeps constant maps exact: RoIAlign's weights sum
    to 1 only up to float rounding, which would otherwise leave ``c = 1e-7`` where the map says 0 and
    ``c = 1 − 1e-7`` where it says 1.
    """
    certainty = 1.0 - levels.float() / 255.0
    return (torch.round(certainty * 65536.0) / 65536.0).clamp_(0.0, 1.0)


def sample_by_certainty(certainty: torch.Tensor, region: torch.Tensor, num: int,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uncertainty-aware prompt sampling, SUM Sec. 3.2.2: pixel i of region R drawn with probability
    ``c_i / Σ_{j ∈ R} c_j`` (with replacement).

    Where every pixel of R has ``c = 0`` the certainty says nothing about R, and pixels are drawn
    uniformly from R (SUM does not say; this keeps a prompt for every region).

    Args:
        certainty: float ``H x W`` in [0, 1].
        region: bool ``H x W``, the region R (SAM's error region or the target mask).
        num: points to draw.

    Returns:
        int64 ``num x 2`` pixel coordinates ``(x, y)`` (SAM's point order).

    Raises:
        ValueError: when ``region`` is empty.
    """
    if certainty.shape != region.shape or certainty.dim() != 2:
        raise ValueError(f"certainty {tuple(certainty.shape)} and region {tuple(region.shape)} must both be H x W")
    weights = (certainty.float().clamp(min=0) * region).flatten()
    if not bool(region.any()):
        raise ValueError("cannot sample a prompt from an empty region")
    if float(weights.sum()) <= 0:
        weights = region.flatten().float()
    flat = torch.multinomial(weights, num, replacement=True, generator=generator)
    width = certainty.shape[1]
    return torch.stack([flat % width, flat // width], dim=1)
