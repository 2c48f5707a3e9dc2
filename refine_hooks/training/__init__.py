"""Training of refiner weights: SAMRefiner++'s IoU adaption (:mod:`.iou_adaption`) and trained refiners,
Phoenix and SUM's mask-refinement module (:mod:`.phoenix`)."""

from .iou_adaption import CoarseMaskDataset, IoUAdaptionConfig, IoUAdaptionTrainer, TrainingLog

__all__ = ["CoarseMaskDataset", "IoUAdaptionConfig", "IoUAdaptionTrainer", "TrainingLog"]
