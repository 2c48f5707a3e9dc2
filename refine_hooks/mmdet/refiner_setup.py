"""Build the refiner a hook or model names, on the detector's device, and pick its images."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log

from refine_hooks.refiners import Refiner, registry
from refine_hooks.refiners.detections import fallback_image_getter
from refine_hooks.refiners.registry import RefinerSpec, module_device  # noqa: F401 (used by the hook and model)

from .images import CHANNEL_ORDERS, IMAGE_SOURCES, SOURCE_PATH, image_from_path, image_from_tensor
from .predictions import ImageGetter, RefineStats, refine_data_samples


def check_options(image_source: str, input_channel_order: str) -> None:
    if image_source not in IMAGE_SOURCES:
        raise ValueError(f"image_source must be one of {IMAGE_SOURCES}, got {image_source!r}")
    if input_channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"input_channel_order must be one of {CHANNEL_ORDERS}, got {input_channel_order!r}")


def build_on_device(spec: RefinerSpec, device: torch.device, owner: str) -> Refiner:
    """:func:`refine_hooks.refiners.registry.build_on_device`, logging through mmengine."""
    return registry.build_on_device(spec, device, owner, log=lambda message: print_log(message, logger="current"))


def image_getter(
    data_samples: Sequence,
    inputs: Optional[Sequence[torch.Tensor]],
    *,
    image_source: str,
    bgr: bool,
    stats: RefineStats,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
) -> ImageGetter:
    """``get_image(i, size)`` for :func:`~refine_hooks.mmdet.predictions.refine_data_samples`.

    ``image_source='auto'`` reads ``img_path`` and falls back to the batch inputs (the reason is kept in
    ``stats.fallback_reasons``); ``'img_path'`` and ``'inputs'`` insist on one source.
    """

    def read_file(i: int, size: Tuple[int, int]):
        return image_from_path(data_samples[i].metainfo, size)

    def rebuild(i: int, size: Tuple[int, int], reason: str) -> np.ndarray:
        if inputs is None or not torch.is_tensor(inputs[i]):
            raise ValueError(f"no image for the refiner: {reason}, and the batch inputs are not available "
                             "as one image tensor per sample (test-time augmentation?)")
        return image_from_tensor(inputs[i], data_samples[i].metainfo, size, bgr=bgr, mean=mean, std=std)

    return fallback_image_getter(read_file, rebuild, image_source=image_source, file_source=SOURCE_PATH, stats=stats)


@dataclasses.dataclass
class RefineOptions:
    """What :class:`~refine_hooks.mmdet.MaskRefinementHook` and :class:`~refine_hooks.mmdet.RefinedDetector`
    both take (their docstrings explain each field), checked once, and the call they both make."""

    score_thr: float = 0.0
    keep_unrefined: bool = False
    boxes_from_refined_masks: Optional[bool] = None
    image_source: str = "auto"
    input_channel_order: str = "bgr"

    def __post_init__(self):
        check_options(self.image_source, self.input_channel_order)
        self.score_thr = float(self.score_thr)

    def refine(self, refiner: Refiner, data_samples: Sequence, inputs: Optional[Sequence[torch.Tensor]],
               stats: RefineStats, *, channels_converted: bool = False, mean: Optional[torch.Tensor] = None,
               std: Optional[torch.Tensor] = None) -> RefineStats:
        """Refine ``data_samples`` in place (:func:`~refine_hooks.mmdet.predictions.refine_data_samples`).

        Args:
            inputs: the batch's image tensors (for images rebuilt from them), or None.
            channels_converted: the data preprocessor swapped the channel order of ``inputs``.
            mean, std: the preprocessor's normalisation of ``inputs``, or None.
        """
        get_image = image_getter(data_samples, inputs, image_source=self.image_source,
                                 bgr=(self.input_channel_order == "bgr") != channels_converted, stats=stats,
                                 mean=mean, std=std)
        return refine_data_samples(refiner, data_samples, get_image, score_thr=self.score_thr,
                                   keep_unrefined=self.keep_unrefined,
                                   boxes_from_refined_masks=self.boxes_from_refined_masks, stats=stats)
