"""The image a refiner sees for an mmdet data sample: read from ``img_path`` or rebuilt from the batch.

mmdet pipelines decode images with OpenCV, so the tensors in a batch are in BGR order unless a
pipeline says otherwise; the data preprocessor may flip them to RGB and normalise them. These helpers
undo what the test pipeline and the preprocessor did (padding, flip, resize, normalisation, channel
order) to give the refiner uint8 RGB ``H x W x 3`` at the size the predicted masks have.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import cv2
import numpy as np
import torch

from refine_hooks.data.images import ImageReadError, load_image, rgb_from_chw
from refine_hooks.refiners.detections import SOURCE_INPUTS

SOURCE_PATH = "img_path"
IMAGE_SOURCES = ("auto", SOURCE_PATH, SOURCE_INPUTS)
CHANNEL_ORDERS = ("bgr", "rgb")


FLIP_DIMS = {"horizontal": (-1,), "vertical": (-2,), "diagonal": (-2, -1)}  # of a 3 x H x W tensor


def _undo_flip(pixels: torch.Tensor, metainfo: Mapping[str, Any]) -> torch.Tensor:
    if not metainfo.get("flip", False):
        return pixels
    direction = metainfo.get("flip_direction", "horizontal")
    if direction not in FLIP_DIMS:
        raise ValueError(f"unknown flip_direction {direction!r} in the data sample of {metainfo.get('img_path')}")
    return pixels.flip(FLIP_DIMS[direction])


def image_from_tensor(
    inputs: torch.Tensor,
    metainfo: Mapping[str, Any],
    size: Tuple[int, int],
    *,
    bgr: bool,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
) -> np.ndarray:
    """Rebuild the original image from one image of a batch.

    Args:
        inputs: ``3 x h x w`` uint8 or float tensor, possibly padded at the bottom/right beyond
            ``metainfo['img_shape']``, possibly flipped (``metainfo['flip']``).
        metainfo: the data sample's metainfo (``img_shape``, ``flip``, ``flip_direction``).
        size: ``(H, W)`` of the output (the size of the predicted masks, normally ``ori_shape``).
        bgr: the tensor's channels are in BGR order.
        mean, std: ``3 x 1 x 1`` normalisation to undo (``x * std + mean``), or None.

    Returns:
        uint8 RGB ``H x W x 3``.
    """
    if inputs.ndim != 3 or inputs.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(inputs.shape)}")
    h, w = metainfo.get("img_shape", inputs.shape[-2:])[:2]
    x = inputs[:, :h, :w].detach().float()
    if std is not None:
        x = x * std.to(x.device).float().view(-1, 1, 1)
    if mean is not None:
        x = x + mean.to(x.device).float().view(-1, 1, 1)
    return rgb_from_chw(_undo_flip(x, metainfo), size, bgr=bgr)


def image_from_path(metainfo: Mapping[str, Any], size: Tuple[int, int]) -> Tuple[Optional[np.ndarray], str]:
    """Read ``metainfo['img_path']`` as uint8 RGB at ``size``.

    Returns ``(image, "")`` or ``(None, reason)`` when there is no path, the file cannot be read, or
    the file's size disagrees with the sample's ``ori_shape``.
    """
    path = metainfo.get("img_path")
    if not path:
        return None, "the data sample has no img_path"
    try:
        image = load_image(path)
    except ImageReadError as error:
        return None, str(error)
    ori_shape = tuple(metainfo.get("ori_shape", image.shape[:2])[:2])
    if image.shape[:2] != ori_shape:
        return None, (f"{path} is {image.shape[0]}x{image.shape[1]} but the data sample's ori_shape is "
                      f"{ori_shape[0]}x{ori_shape[1]}")
    height, width = size
    if image.shape[:2] != (height, width):  # masks predicted with rescale=False
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, ""
