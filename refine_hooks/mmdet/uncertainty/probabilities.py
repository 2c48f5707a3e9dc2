"""Keep a detector's mask probabilities next to its binary masks (the σ(s) of SUM's uncertainty map), for
the pseudo-label hook: mmdet thresholds them away inside the heads.

- Mask R-CNN family (``FCNMaskHead``): each image's masks are pasted a second time with mmdet's own
  ``mask_thr_binary < 0`` mode, which returns the pasted probabilities as uint8 ``⌊255 p⌋``; the binary
  masks come from the unchanged call.
- Mask2Former / MaskFormer (``MaskFormerFusionHead``): the instances are the queries the fusion head picks
  (its top-k of class scores, things only); their mask logits give ``round(255 σ(logit))``. The pick is
  recomputed from the same inputs and checked against the head's own binary masks, so a change of
  mmdet's selection stops with an error instead of pairing wrong maps.

Other detectors keep no probabilities (the job then uses the binary masks' signed-distance sigmoid).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List

import numpy as np
import torch
import torch.nn.functional as F


class KeptProbabilities:
    """uint8 ``N x H x W`` probability levels per image, in the order the detector produced them."""

    def __init__(self):
        self.by_image_id: Dict[int, np.ndarray] = {}
        self.in_order: List[np.ndarray] = []

    def for_samples(self, samples) -> List[np.ndarray]:
        """The levels of each data sample of one ``test_step`` (None where the detector kept none)."""
        out = []
        for sample in samples:
            levels = self.by_image_id.pop(int(sample.img_id), None)
            if levels is None and self.in_order:
                levels = self.in_order.pop(0)
            if levels is not None and tuple(levels.shape) != tuple(sample.pred_instances.masks.shape):
                raise RuntimeError(f"kept mask probabilities {tuple(levels.shape)} do not match the masks "
                                   f"{tuple(sample.pred_instances.masks.shape)} of image {sample.img_id}")
            out.append(levels)
        return out


def _wrap_fcn_mask_head(head, kept: KeptProbabilities):
    original = head._predict_by_feat_single

    def predict_single(mask_preds, bboxes, labels, img_meta, rcnn_test_cfg, rescale=False, activate_map=False):
        soft_cfg = copy.deepcopy(rcnn_test_cfg)
        soft_cfg.mask_thr_binary = -1.0
        # bboxes.clone(): mmdet rescales the boxes in place
        soft = original(mask_preds, bboxes.clone(), labels, img_meta, soft_cfg, rescale, activate_map)
        kept.by_image_id[int(img_meta["img_id"])] = soft.cpu().numpy()
        return original(mask_preds, bboxes, labels, img_meta, rcnn_test_cfg, rescale, activate_map)

    return "_predict_by_feat_single", predict_single


def _probability_levels(logits: torch.Tensor) -> np.ndarray:
    """float ``N x H x W`` mask logits -> uint8 ``round(255 σ(logit))``, with level >= 128 exactly where the
    logit is positive (the head's mask): a logit in about (-6e-8, 0] has float32 σ = 0.5, and 127.5 would
    round to 128, calling foreground a pixel the head calls background."""
    positive = (logits > 0).cpu().numpy()
    levels = np.rint(torch.sigmoid(logits.float()).cpu().numpy() * 255)
    levels = np.where(positive, np.maximum(levels, 128), np.minimum(levels, 127))
    return levels.astype(np.uint8)


def _wrap_maskformer_fusion_head(head, kept: KeptProbabilities):
    original = head.instance_postprocess

    def instance_postprocess(mask_cls, mask_pred):
        results = original(mask_cls, mask_pred)
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        _, top = scores.flatten(0, 1).topk(head.test_cfg.get("max_per_image", 100), sorted=False)
        labels, queries = top % head.num_classes, top // head.num_classes
        logits = mask_pred[queries][labels < head.num_things_classes]
        if not torch.equal(logits > 0, results.masks.bool()):
            raise RuntimeError("MaskFormerFusionHead picked other queries than refine_hooks recomputes: mmdet's instance "
                               "selection changed; the mask probabilities cannot be paired with its masks")
        kept.in_order.append(_probability_levels(logits))
        return results

    return "instance_postprocess", instance_postprocess


@contextlib.contextmanager
def keeping_mask_probabilities(model) -> Iterator[KeptProbabilities]:
    """Within the block, ``model.test_step`` also records its mask probabilities (module docstring)."""
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead

    module = getattr(model, "module", model)
    kept = KeptProbabilities()
    patches = []
    mask_head = getattr(getattr(module, "roi_head", None), "mask_head", None)
    if isinstance(mask_head, FCNMaskHead):
        patches.append((mask_head, *_wrap_fcn_mask_head(mask_head, kept)))
    fusion_head = getattr(module, "panoptic_fusion_head", None)
    if isinstance(fusion_head, MaskFormerFusionHead):
        patches.append((fusion_head, *_wrap_maskformer_fusion_head(fusion_head, kept)))
    for owner, name, function in patches:
        setattr(owner, name, function)  # on the instance only; the class is untouched
    try:
        yield kept
    finally:
        for owner, name, _ in patches:
            delattr(owner, name)
