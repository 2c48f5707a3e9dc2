"""A per-mask map stored only inside a window of the image (a box), with a constant everywhere else.

Soft masks and uncertainty maps of an object are nonzero near the object only; keeping them on a
window keeps memory proportional to the object's size, never ``N x H x W`` floats per image.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

Box = Tuple[int, int, int, int]  # x1, y1, x2, y2, inclusive pixel indices


@dataclasses.dataclass
class WindowedMap:
    """``values`` placed at ``(x0, y0)`` of an image; the map equals ``fill`` outside the window.

    Attributes:
        values: ``h x w`` array (any dtype), the map inside the window.
        x0, y0: the window's top-left pixel in the image.
        fill: the map's value outside the window.
    """

    values: np.ndarray
    x0: int
    y0: int
    fill: float = 0.0

    @property
    def box(self) -> Box:
        """Inclusive ``x1, y1, x2, y2`` of the window."""
        height, width = self.values.shape
        return self.x0, self.y0, self.x0 + width - 1, self.y0 + height - 1

    def crop(self, box: Sequence[int], dtype=None) -> np.ndarray:
        """The map on the inclusive ``box`` (``fill`` where the box leaves the window)."""
        x1, y1, x2, y2 = (int(v) for v in box)
        dtype = dtype or self.values.dtype
        out = np.full((y2 - y1 + 1, x2 - x1 + 1), self.fill, dtype=dtype)
        wx1, wy1, wx2, wy2 = self.box
        ix1, iy1, ix2, iy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
        if ix1 <= ix2 and iy1 <= iy2:
            out[iy1 - y1 : iy2 - y1 + 1, ix1 - x1 : ix2 - x1 + 1] = self.values[iy1 - wy1 : iy2 - wy1 + 1, ix1 - wx1 : ix2 - wx1 + 1]
        return out

    def full(self, height: int, width: int, dtype=None) -> np.ndarray:
        """The map on the whole ``height x width`` image."""
        return self.crop((0, 0, width - 1, height - 1), dtype)


def mask_box(mask: np.ndarray) -> Optional[Box]:
    """Inclusive tight box of a bool ``H x W`` mask; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def union_box(*boxes: Optional[Sequence[int]]) -> Optional[Box]:
    """The smallest inclusive box holding every given box (None entries are ignored; None if all are)."""
    present = [tuple(int(v) for v in b) for b in boxes if b is not None]
    if not present:
        return None
    return (min(b[0] for b in present), min(b[1] for b in present), max(b[2] for b in present), max(b[3] for b in present))
