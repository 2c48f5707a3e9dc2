"""Mask heads that hand each target pixel's certainty to their uncertainty-aware losses (:mod:`.losses`).

- :class:`UncertaintyAwareFCNMaskHead` (Mask R-CNN): the 28x28 certainty targets are mmdet's own
  ``mask_target`` of the uncertainty maps, with the mask targets' proposals and assigned instances and
  ``soft_mask_target=True``: RoI-aligned exactly like the mask targets, without binarising.
- :class:`UncertaintyAwareMask2FormerHead`: the certainty is point-sampled at the very points the mask
  loss samples (``point_sample`` of the matched instances' maps at ``points_coords``, the map's border
  pixels continued beyond the image for points within half a pixel of it).

Ground truth without maps (plain ``BitmapMasks``, human labels) has c = 1, and a batch without any maps
trains exactly as the stock head.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from mmcv.ops import point_sample
from mmdet.models.dense_heads import Mask2FormerHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.models.utils import get_uncertain_point_coords_with_randomness
from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks, mask_target
from mmdet.utils import reduce_mean
from mmengine.config import ConfigDict

from refine_hooks.uncertainty import certainty_from_resampled_levels

from .losses import UncertaintyAwareCrossEntropyLoss, UncertaintyAwareDiceLoss, UncertaintyAwareFocalLoss
from .masks import uncertainty_levels


def _levels_or_zeros(masks) -> BitmapMasks:
    levels = uncertainty_levels(masks)
    if levels is not None:
        return levels
    return BitmapMasks(np.zeros((len(masks), masks.height, masks.width), dtype=np.uint8), masks.height, masks.width)


@MODELS.register_module()
class UncertaintyAwareFCNMaskHead(FCNMaskHead):
    """``FCNMaskHead`` whose mask loss is weighted per target pixel by the RoI-aligned certainty.

    Use with ``loss_mask=dict(type='UncertaintyAwareCrossEntropyLoss', use_mask=True, loss_weight=1.0)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.loss_mask, UncertaintyAwareCrossEntropyLoss):
            raise TypeError(f"{type(self).__name__} needs loss_mask=dict(type='UncertaintyAwareCrossEntropyLoss', use_mask=True), "
                            f"got {type(self.loss_mask).__name__}")

    def certainty_targets(self, sampling_results, batch_gt_instances, rcnn_train_cfg) -> Optional[torch.Tensor]:
        """float ``num_pos x 28 x 28`` certainty of the mask targets, or None when no instance has a map.

        mmdet's ``mask_target`` on the uncertainty levels, with the targets' proposals and assigned
        instances and ``soft_mask_target=True`` (RoIAlign, no binarising): c = 1 − aligned levels / 255
        (:func:`refine_hooks.uncertainty.certainty_from_resampled_levels`).
        """
        if not any(uncertainty_levels(gt.masks) is not None for gt in batch_gt_instances):
            return None
        cfg = ConfigDict(dict(rcnn_train_cfg, soft_mask_target=True))
        aligned = mask_target([res.pos_priors for res in sampling_results], [res.pos_assigned_gt_inds for res in sampling_results],
                              [_levels_or_zeros(gt.masks) for gt in batch_gt_instances], cfg)
        return certainty_from_resampled_levels(aligned)

    def loss_and_target(self, mask_preds, sampling_results, batch_gt_instances, rcnn_train_cfg) -> dict:
        certainty = self.certainty_targets(sampling_results, batch_gt_instances, rcnn_train_cfg)
        if certainty is None:
            return super().loss_and_target(mask_preds, sampling_results, batch_gt_instances, rcnn_train_cfg)
        mask_targets = self.get_targets(sampling_results=sampling_results, batch_gt_instances=batch_gt_instances,
                                        rcnn_train_cfg=rcnn_train_cfg)
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        if mask_preds.size(0) == 0:
            loss_mask = mask_preds.sum()
        else:
            labels = torch.zeros_like(pos_labels) if self.class_agnostic else pos_labels
            loss_mask = self.loss_mask(mask_preds, mask_targets, labels, certainty=certainty)
        return dict(loss_mask=dict(loss_mask=loss_mask), mask_targets=mask_targets)


@MODELS.register_module()
class UncertaintyAwareMask2FormerHead(Mask2FormerHead):
    """``Mask2FormerHead`` whose point-sampled mask and Dice losses weight each point by its certainty.

    Use with ``loss_mask=dict(type='UncertaintyAwareCrossEntropyLoss', use_sigmoid=True, ...)`` (or
    ``UncertaintyAwareFocalLoss``) and ``loss_dice=dict(type='UncertaintyAwareDiceLoss', ...)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.loss_mask, (UncertaintyAwareCrossEntropyLoss, UncertaintyAwareFocalLoss)):
            raise TypeError(f"{type(self).__name__} needs loss_mask of type UncertaintyAwareCrossEntropyLoss or "
                            f"UncertaintyAwareFocalLoss, got {type(self.loss_mask).__name__}")
        if not isinstance(self.loss_dice, UncertaintyAwareDiceLoss):
            raise TypeError(f"{type(self).__name__} needs loss_dice of type UncertaintyAwareDiceLoss, got {type(self.loss_dice).__name__}")

    def preprocess_gt(self, batch_gt_instances, batch_gt_semantic_segs):
        processed = super().preprocess_gt(batch_gt_instances, batch_gt_semantic_segs)
        for before, after in zip(batch_gt_instances, processed):
            levels = uncertainty_levels(before.masks)
            if levels is not None:
                after.uncertainty = torch.from_numpy(levels.masks).to(after.masks.device)
        return processed

    def _get_targets_single(self, cls_score, mask_pred, gt_instances, img_meta):
        targets = super()._get_targets_single(cls_score, mask_pred, gt_instances, img_meta)
        sampling_result = targets[-1]
        uncertainty = gt_instances.uncertainty[sampling_result.pos_assigned_gt_inds] if "uncertainty" in gt_instances else None
        return targets + (uncertainty,)

    def _loss_by_feat_single(self, cls_scores, mask_preds, batch_gt_instances, batch_img_metas):
        """mmdet 3.3's ``Mask2FormerHead._loss_by_feat_single``, step by step (the same calls in the same
        order, so the same random points), plus the certainty at the sampled points."""
        num_images = cls_scores.size(0)
        (labels_list, label_weights_list, mask_targets_list, mask_weights_list, avg_factor,
         uncertainty_list) = self.get_targets([cls_scores[i] for i in range(num_images)],
                                              [mask_preds[i] for i in range(num_images)], batch_gt_instances, batch_img_metas)
        labels = torch.stack(labels_list, dim=0).flatten(0, 1)
        label_weights = torch.stack(label_weights_list, dim=0).flatten(0, 1)
        mask_targets = torch.cat(mask_targets_list, dim=0)
        mask_weights = torch.stack(mask_weights_list, dim=0)
        cls_scores = cls_scores.flatten(0, 1)
        class_weight = cls_scores.new_tensor(self.class_weight)
        loss_cls = self.loss_cls(cls_scores, labels, label_weights, avg_factor=class_weight[labels].sum())

        num_total_masks = max(reduce_mean(cls_scores.new_tensor([avg_factor])), 1)
        mask_preds = mask_preds[mask_weights > 0]
        if mask_targets.shape[0] == 0:
            return loss_cls, mask_preds.sum(), mask_preds.sum()

        with torch.no_grad():
            points_coords = get_uncertain_point_coords_with_randomness(
                mask_preds.unsqueeze(1), None, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            mask_point_targets = point_sample(mask_targets.unsqueeze(1).float(), points_coords).squeeze(1)
            point_certainty = self._point_certainty(uncertainty_list, mask_targets_list, points_coords)
        mask_point_preds = point_sample(mask_preds.unsqueeze(1), points_coords).squeeze(1)

        extra = {} if point_certainty is None else {"certainty": point_certainty}
        loss_dice = self.loss_dice(mask_point_preds, mask_point_targets, avg_factor=num_total_masks, **extra)
        extra = {} if point_certainty is None else {"certainty": point_certainty.reshape(-1)}
        loss_mask = self.loss_mask(mask_point_preds.reshape(-1), mask_point_targets.reshape(-1),
                                   avg_factor=num_total_masks * self.num_points, **extra)
        return loss_cls, loss_mask, loss_dice

    @staticmethod
    def _point_certainty(uncertainty_list: List[Optional[torch.Tensor]], mask_targets_list: List[torch.Tensor],
                         points_coords: torch.Tensor) -> Optional[torch.Tensor]:
        """float ``num_matched x num_points`` certainty at the loss's points (None: no image has maps)."""
        if all(u is None for u in uncertainty_list):
            return None
        levels = torch.cat([torch.zeros_like(t, dtype=torch.uint8) if u is None else u
                            for u, t in zip(uncertainty_list, mask_targets_list)], dim=0)
        # The map continues beyond the image's last pixel (points within half a pixel of the border).
        return certainty_from_resampled_levels(point_sample(levels.unsqueeze(1).float(), points_coords, padding_mode="border").squeeze(1))
