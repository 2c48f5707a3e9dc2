"""The image a refiner sees for a Detectron2 input dict: read from ``file_name`` or rebuilt from ``image``.

Detectron2's test mapper reads ``file_name`` in ``cfg.INPUT.FORMAT`` (BGR by default), resizes it
(``ResizeShortestEdge``) and hands the model ``image`` (``3 x h x w``) plus the original ``height`` and
``width``, at which the predicted masks are pasted. The refiner wants uint8 RGB at that size.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from refine_hooks.data.images import ImageReadError, load_image, rgb_from_chw
from refine_hooks.refiners.detections import SOURCE_INPUTS, ImageGetter, RefineStats, fallback_image_getter

SOURCE_PATH = "file_name"
IMAGE_SOURCES = ("auto", SOURCE_PATH, SOURCE_INPUTS)
INPUT_FORMATS = ("BGR", "RGB")


def check_input_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"the refiner can rebuild images from INPUT.FORMAT {INPUT_FORMATS}, got {input_format!r}; "
                         "use image_source 'file_name' for other formats")


def image_from_input(image: torch.Tensor, size: Tuple[int, int], input_format: str) -> np.ndarray:
    """uint8 RGB ``H x W x 3`` from a model input ``image`` (``3 x h x w`` uint8 or float, 0..255)."""
    check_input_format(input_format)
    return rgb_from_chw(image, size, bgr=input_format == "BGR")


def image_from_file(record: Mapping[str, Any], size: Tuple[int, int]) -> Tuple[Optional[np.ndarray], str]:
    """Read ``record['file_name']`` as uint8 RGB (EXIF orientation applied, as Detectron2's ``read_image``).

    Returns ``(image, "")`` or ``(None, reason)`` when there is no file name, the file cannot be read, or
    its size is not the record's ``height x width``.
    """
    path = record.get("file_name")
    if not path:
        return None, "the input has no file_name"
    try:
        image = load_image(path)
    except ImageReadError as error:
        return None, str(error)
    expected = (int(record.get("height", image.shape[0])), int(record.get("width", image.shape[1])))
    if image.shape[:2] != expected:
        return None, (f"{path} is {image.shape[0]}x{image.shape[1]} but the input's height x width is "
                      f"{expected[0]}x{expected[1]}")
    height, width = size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, ""


def image_getter(batched_inputs: Sequence[Dict[str, Any]], *, image_source: str, input_format: str,
                 stats: RefineStats) -> ImageGetter:
    """``get_image(i, size)`` for :func:`refine_hooks.refiners.detections.refine_detections`.

    ``auto`` reads ``file_name`` and falls back to the input's ``image`` (the reason is kept in
    ``stats.fallback_reasons``); ``file_name`` and ``inputs`` insist on one source.
    """

    def read_file(i: int, size: Tuple[int, int]):
        return image_from_file(batched_inputs[i], size)

    def rebuild(i: int, size: Tuple[int, int], reason: str) -> np.ndarray:
        if "image" not in batched_inputs[i]:
            raise ValueError(f"no image for the refiner: {reason}, and the input has no 'image'")
        return image_from_input(batched_inputs[i]["image"], size, input_format)

    return fallback_image_getter(read_file, rebuild, image_source=image_source, file_source=SOURCE_PATH, stats=stats)
