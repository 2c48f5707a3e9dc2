"""SUM-style uncertainty-aware training in MMDetection (docs/uncertainty.md).

Registered when ``refine_hooks.mmdet`` is imported:

- ``UncertaintyCocoDataset`` (DATASETS) and ``LoadUncertainty`` (TRANSFORMS): the sidecar's maps become
  :class:`BitmapMasksWithUncertainty`, moved by mmdet's own mask geometry through every transform;
- ``UncertaintyAwareFCNMaskHead``, ``UncertaintyAwareMask2FormerHead`` (MODELS): heads that hand the
  RoI-aligned / point-sampled certainty to
- ``UncertaintyAwareCrossEntropyLoss``, ``UncertaintyAwareFocalLoss``, ``UncertaintyAwareDiceLoss`` (MODELS).

Configs: ``configs/mmdet/uncertainty/``.
"""

from .data import LoadUncertainty, UncertaintyCocoDataset
from .heads import UncertaintyAwareFCNMaskHead, UncertaintyAwareMask2FormerHead
from .losses import UncertaintyAwareCrossEntropyLoss, UncertaintyAwareDiceLoss, UncertaintyAwareFocalLoss
from .masks import BitmapMasksWithUncertainty
from .probabilities import keeping_mask_probabilities

__all__ = [
    "BitmapMasksWithUncertainty",
    "LoadUncertainty",
    "UncertaintyAwareCrossEntropyLoss",
    "UncertaintyAwareDiceLoss",
    "UncertaintyAwareFCNMaskHead",
    "UncertaintyAwareFocalLoss",
    "UncertaintyAwareMask2FormerHead",
    "UncertaintyCocoDataset",
    "keeping_mask_probabilities",
]
