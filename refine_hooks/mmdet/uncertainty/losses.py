"""Uncertainty-aware mask losses for mmdet (SUM Sec. 3.2.1): mmdet's own losses with each pixel's
certainty ``c`` passed as ``certainty=`` (the heads in :mod:`.heads` do that).

- :class:`UncertaintyAwareCrossEntropyLoss`: for ``FCNMaskHead`` (``use_mask=True``: the class's 28x28
  slice, BCE weighted by c and averaged over pixels, :func:`refine_hooks.uncertainty.ua_bce_with_logits`)
  and for point-sampled mask losses (``use_sigmoid=True``: mmdet's element-wise weight times c);
- :class:`UncertaintyAwareFocalLoss`: mmdet's sigmoid focal loss with element weight c (SUM eq. 1);
- :class:`UncertaintyAwareDiceLoss`: Dice over the pixels with c > θ (SUM eq. 2,
  :func:`refine_hooks.uncertainty.ua_dice_loss`), θ = 0.6.

Without ``certainty`` (or with c = 1) each is exactly the mmdet loss it subclasses.
"""

from __future__ import annotations

from typing import Optional

import torch
from mmdet.models.losses import CrossEntropyLoss, DiceLoss, FocalLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS

from refine_hooks.uncertainty import DEFAULT_THETA, ua_bce_with_logits, ua_dice_loss


def _times(weight: Optional[torch.Tensor], certainty: torch.Tensor) -> torch.Tensor:
    return certainty if weight is None else weight * certainty


@MODELS.register_module()
class UncertaintyAwareCrossEntropyLoss(CrossEntropyLoss):
    """mmdet's ``CrossEntropyLoss`` whose ``forward`` also takes ``certainty`` (same shape as the target)."""

    def forward(self, cls_score, label, weight=None, avg_factor=None, reduction_override=None, ignore_index=None,
                certainty: Optional[torch.Tensor] = None, **kwargs):
        if certainty is None:
            return super().forward(cls_score, label, weight, avg_factor, reduction_override, ignore_index, **kwargs)
        if self.use_mask:
            # FCNMaskHead passes the RoIs' class labels where other losses take a weight.
            labels = weight
            if self.class_weight is not None or avg_factor is not None or (reduction_override or self.reduction) != "mean":
                raise ValueError("the uncertainty-aware mask cross-entropy supports neither class_weight, avg_factor nor a reduction other than mean")
            rows = torch.arange(cls_score.size(0), device=cls_score.device)
            selected = cls_score[rows, labels].squeeze(1)
            return self.loss_weight * ua_bce_with_logits(selected, label, certainty)[None]
        if self.use_sigmoid:
            return super().forward(cls_score, label, _times(weight, certainty), avg_factor, reduction_override, ignore_index, **kwargs)
        raise ValueError("certainty weights need use_sigmoid=True or use_mask=True (per-pixel binary targets)")


@MODELS.register_module()
class UncertaintyAwareFocalLoss(FocalLoss):
    """mmdet's sigmoid ``FocalLoss`` on per-pixel binary targets (same shape as the prediction) with each
    element weighted by ``certainty``: SUM's uncertainty-aware focal loss (eq. 1)."""

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                certainty: Optional[torch.Tensor] = None):
        if certainty is not None:
            if pred.shape != target.shape or certainty.shape != pred.shape:
                raise ValueError(f"certainty weights need per-pixel targets: pred {tuple(pred.shape)}, "
                                 f"target {tuple(target.shape)}, certainty {tuple(certainty.shape)}")
            weight = _times(weight, certainty)
        return super().forward(pred, target, weight, avg_factor, reduction_override)


@MODELS.register_module()
class UncertaintyAwareDiceLoss(DiceLoss):
    """mmdet's (naive) ``DiceLoss`` restricted to the pixels with ``certainty > theta`` (SUM eq. 2).

    Args:
        theta: θ (SUM B.1: 0.6).
        **kwargs: ``DiceLoss``'s; ``naive_dice=True`` (Mask2Former's and SUM's form).
    """

    def __init__(self, theta: float = DEFAULT_THETA, **kwargs):
        super().__init__(**kwargs)
        self.theta = theta

    def forward(self, pred, target, weight=None, reduction_override=None, avg_factor=None,
                certainty: Optional[torch.Tensor] = None):
        if certainty is None:
            return super().forward(pred, target, weight, reduction_override, avg_factor)
        if not self.naive_dice or not (self.use_sigmoid or not self.activate):
            raise ValueError("the uncertainty-aware Dice loss is the naive Dice (naive_dice=True) of sigmoid probabilities")
        assert reduction_override in (None, "none", "mean", "sum")
        reduction = reduction_override if reduction_override else self.reduction
        loss = ua_dice_loss(pred, target, certainty, theta=self.theta, eps=self.eps, sigmoid=self.activate)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
