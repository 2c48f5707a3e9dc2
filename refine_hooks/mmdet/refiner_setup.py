"""Build the refiner a hook or model names, on the detector's device, and pick its images."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.logging import print_log

from refine_hooks.refiners import Refiner, build_refiner

from .images import CHANNEL_ORDERS, IMAGE_SOURCES, SOURCE_INPUTS, SOURCE_PATH, image_from_path, image_from_tensor
from .predictions import ImageGetter, RefineStats

RefinerSpec = Union[Mapping[str, Any], Refiner]


def check_options(image_source: str, input_channel_order: str) -> None:
    if image_source not in IMAGE_SOURCES:
        raise ValueError(f"image_source must be one of {IMAGE_SOURCES}, got {image_source!r}")
    if input_channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"input_channel_order must be one of {CHANNEL_ORDERS}, got {input_channel_order!r}")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (cpu for a model without either)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def build_on_device(spec: RefinerSpec, device: torch.device, owner: str) -> Refiner:
    """A refiner from a config dict (``build_refiner``) or an instance, moved to ``device``.

    The refiner runs where the detector runs: a ``device`` in the config is replaced (and said so).
    """
    if isinstance(spec, Refiner):
        refiner = spec
    elif isinstance(spec, Mapping):
        config = dict(spec)
        asked = config.get("device")
        if asked is not None and torch.device(asked) != device:
            print_log(f"{owner}: the refiner config asks for device {asked!r}; it runs on the detector's "
                      f"device {device} instead", logger="current")
        config["device"] = str(device)
        refiner = build_refiner(config)
    else:
        raise TypeError(f"{owner}: refiner must be a config dict or a Refiner, got {type(spec).__name__}")
    if hasattr(refiner, "to"):
        refiner.to(device)
    return refiner


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
