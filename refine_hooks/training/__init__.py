"""Training of refiner weights: SAMRefiner++'s IoU adaption (:mod:`.iou_adaption`)."""

from .iou_adaption import CoarseMaskDataset, IoUAdaptionConfig, IoUAdaptionTrainer, TrainingLog

__all__ = ["CoarseMaskDataset", "IoUAdaptionConfig", "IoUAdaptionTrainer", "TrainingLog"]
