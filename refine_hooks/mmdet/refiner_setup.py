"""Build the refiner a hook or model names, on the detector's device, and pick its images."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log

from refine_hooks.refiners import Refiner, registry
from refine_hooks.refiners.registry import RefinerSpec, module_device  # noqa: F401 (used by the hook and model)

from .images import CHANNEL_ORDERS, IMAGE_SOURCES, SOURCE_INPUTS, SOURCE_PATH, image_from_path, image_from_tensor
from .predictions import ImageGetter, RefineStats


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

    def get(i: int, size: Tuple[int, int]) -> Tuple[np.ndarray, str]:
        metainfo = data_samples[i].metainfo
        reason = "image_source='inputs'"
        if image_source in ("auto", SOURCE_PATH):
            image, reason = image_from_path(metainfo, size)
            if image is not None:
                return image, SOURCE_PATH
            if image_source == SOURCE_PATH:
                raise ValueError(f"image_source='img_path' but the refiner image cannot be read: {reason}")
        if inputs is None or not torch.is_tensor(inputs[i]):
            raise ValueError(f"no image for the refiner: {reason}, and the batch inputs are not available "
                             "as one image tensor per sample (test-time augmentation?)")
        if len(stats.fallback_reasons) < 10:
            stats.fallback_reasons.append(reason)
        return image_from_tensor(inputs[i], metainfo, size, bgr=bgr, mean=mean, std=std), SOURCE_INPUTS

    return get
