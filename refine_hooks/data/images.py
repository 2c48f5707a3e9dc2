"""Image files to uint8 RGB ``H x W x 3`` arrays, and a cheap header check of their size.

Every image that reaches a refiner goes through :func:`load_image`, so gray, palette, RGBA, CMYK, 16-bit
and EXIF-rotated files all arrive in the one convention the core uses. Anything that cannot be read
raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 are transposes: the displayed image has width and height swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageReadError(RuntimeError):
    """An image file is missing or cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str, reason: Optional[str] = None):
        # One-argument form: the full message (how DataLoader re-raises a worker's exception).
        super().__init__(path if reason is None else f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason if reason is not None else path


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or 32-bit integer / float image to uint8 (16-bit: the high byte)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) <= 65535):
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    array = array.astype(np.float64)
    top = float(array.max(initial=0.0))
    if top <= 1.0:  # float images in [0, 1]
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> uint8 ``H x W x 3`` RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels keep their colour: refiners look at the colour, not the alpha.
        image = image.convert("RGBA").convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``H x W x 3``, applying its EXIF orientation.

    Converts gray (8 and 16 bit), palette, RGBA/LA, CMYK and 16-bit files. Raises :class:`ImageReadError`
    when the file is missing, truncated or not an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file does not exist")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            array = _pil_to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an unexpected shape {array.shape}")
    return np.ascontiguousarray(array)


def read_image_size(path: str | os.PathLike) -> Tuple[int, int]:
    """``(height, width)`` of an image as :func:`load_image` would return it, from the header only.

    Cheap: decodes no pixels. Raises :class:`ImageReadError` when the file is missing or its header is
    not an image header.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ImageReadError(path, f"{type(error).__name__}: {error}") from error
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


def rgb_from_chw(pixels, size: Tuple[int, int], *, bgr: bool) -> np.ndarray:
    """uint8 RGB ``H x W x 3`` from a detector's input image, for the refiner.

    Args:
        pixels: ``3 x h x w`` tensor of values on the 0..255 scale (uint8 or float; rounded and clamped).
        size: ``(H, W)`` of the output; resized bilinearly (OpenCV) when ``h x w`` differs.
        bgr: the channels are in BGR order (OpenCV-decoded images, Detectron2's default ``INPUT.FORMAT``).
    """
    import cv2
    import torch

    if not torch.is_tensor(pixels) or pixels.ndim != 3 or pixels.shape[0] != 3:
        shape = tuple(pixels.shape) if torch.is_tensor(pixels) else type(pixels).__name__
        raise ValueError(f"expected a 3 x H x W image tensor, got {shape}")
    image = pixels.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if bgr:
        image = image[:, :, ::-1]
    height, width = size
    if image.shape[:2] != (height, width):
        image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image)
