"""``BitmapMasksWithUncertainty``: mmdet's ``BitmapMasks`` that carry each instance's uncertainty map
through the data pipeline.

Every geometric method (rescale, resize, flip, pad, crop, expand, translate, shear, rotate, indexing,
concatenation) is mmdet's own ``BitmapMasks`` method applied to the masks and, with the same arguments,
to the uncertainty levels (uint8 ``round(255 u)``, a second ``BitmapMasks``): whatever mmdet's transforms
and data preprocessor do to the masks, the maps follow pixel for pixel. Fills (padding, expansion, the
borders of translations and rotations) are ``u = 0``: new pixels are certain background, as the masks'
fill 0 is background.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from mmdet.structures.mask import BitmapMasks


class BitmapMasksWithUncertainty(BitmapMasks):
    """Bitmap masks plus uint8 uncertainty levels of the same shape.

    Args:
        masks: ``N x H x W`` masks (as ``BitmapMasks`` takes them).
        height, width: the masks' size.
        uncertainty: uint8 ``N x H x W`` levels (``u = level / 255``, certainty ``1 − u``); None: all 0.
    """

    def __init__(self, masks, height: int, width: int, uncertainty: Optional[np.ndarray] = None):
        super().__init__(masks, height, width)
        if uncertainty is None:
            uncertainty = np.zeros((len(self.masks), height, width), dtype=np.uint8)
        self.uncertainty = uncertainty if isinstance(uncertainty, BitmapMasks) else BitmapMasks(uncertainty, height, width)
        if self.uncertainty.masks.shape != self.masks.shape:
            raise ValueError(f"uncertainty levels {self.uncertainty.masks.shape} do not match the masks {self.masks.shape}")

    @classmethod
    def _pair(cls, masks: BitmapMasks, uncertainty: BitmapMasks) -> "BitmapMasksWithUncertainty":
        return cls(masks.masks, masks.height, masks.width, uncertainty)

    def certainty(self) -> np.ndarray:
        """float32 ``N x H x W`` certainty ``c = 1 − u``."""
        return 1.0 - self.uncertainty.masks.astype(np.float32) / 255.0

    def __getitem__(self, index):
        return self._pair(super().__getitem__(index), self.uncertainty[index])

    def rescale(self, scale, interpolation="nearest"):
        return self._pair(super().rescale(scale, interpolation), self.uncertainty.rescale(scale, interpolation))

    def resize(self, out_shape, interpolation="nearest"):
        return self._pair(super().resize(out_shape, interpolation), self.uncertainty.resize(out_shape, interpolation))

    def flip(self, flip_direction="horizontal"):
        return self._pair(super().flip(flip_direction), self.uncertainty.flip(flip_direction))

    def pad(self, out_shape, pad_val=0):
        return self._pair(super().pad(out_shape, pad_val), self.uncertainty.pad(out_shape, 0))

    def crop(self, bbox):
        return self._pair(super().crop(bbox), self.uncertainty.crop(bbox))

    def expand(self, expanded_h, expanded_w, top, left):
        return self._pair(super().expand(expanded_h, expanded_w, top, left),
                          self.uncertainty.expand(expanded_h, expanded_w, top, left))

    def translate(self, out_shape, offset, direction="horizontal", border_value=0, interpolation="bilinear"):
        return self._pair(super().translate(out_shape, offset, direction, border_value, interpolation),
                          self.uncertainty.translate(out_shape, offset, direction, 0, interpolation))

    def shear(self, out_shape, magnitude, direction="horizontal", border_value=0, interpolation="bilinear"):
        return self._pair(super().shear(out_shape, magnitude, direction, border_value, interpolation),
                          self.uncertainty.shear(out_shape, magnitude, direction, 0, interpolation))

    def rotate(self, out_shape, angle, center=None, scale=1.0, border_value=0, interpolation="bilinear"):
        return self._pair(super().rotate(out_shape, angle, center, scale, border_value, interpolation),
                          self.uncertainty.rotate(out_shape, angle, center, scale, 0, interpolation))

    @classmethod
    def cat(cls, masks: Sequence[BitmapMasks]) -> "BitmapMasksWithUncertainty":
        if len(masks) == 0:
            raise ValueError("masks should not be an empty list.")
        levels = [m.uncertainty if isinstance(m, cls) else BitmapMasks(np.zeros_like(m.masks, dtype=np.uint8), m.height, m.width)
                  for m in masks]
        return cls._pair(BitmapMasks.cat([BitmapMasks(m.masks, m.height, m.width) for m in masks]), BitmapMasks.cat(levels))


def uncertainty_levels(masks) -> Optional[BitmapMasks]:
    """The uncertainty levels carried by ``masks`` (None for masks without any)."""
    return masks.uncertainty if isinstance(masks, BitmapMasksWithUncertainty) else None
