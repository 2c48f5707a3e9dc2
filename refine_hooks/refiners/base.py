"""The interface every refiner implements, and what it returns."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.windows import WindowedMap

# Reasons a mask can be passed through unchanged. Stable strings: they are written into output files.
PASS_EMPTY = "empty"
PASS_BELOW_MIN_AREA = "below_min_area"
PASS_SAM_EMPTY = "sam_output_empty"


@dataclasses.dataclass
class RefineResult:
    """Refinement of all masks of one image.

    Attributes:
        masks: bool ``N x H x W``, the refined masks at the image's original size, in input order.
            A passed-through mask is the input mask, unchanged.
        iou_predictions: float32 ``N``, the IoU the model predicted for the selected candidate of the
            last iteration; NaN for passed-through masks.
        passed_through: dict from mask index to the reason (one of the ``PASS_*`` strings) that mask
            was returned unchanged. Indices not in it were refined.
        probabilities: only when asked for (``probabilities=True``), per mask the refined probabilities
            σ(r) of SUM's uncertainty map (Sec. 3.2.3, eq. 3): the sigmoid of the selected candidate's
            logits at the original size in the last iteration, float32 on the window
            ``union(box of the coarse mask, box of the refined mask)`` (the only place the uncertainty
            map is nonzero, see :mod:`refine_hooks.uncertainty`); None for passed-through masks.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    passed_through: Dict[int, str] = dataclasses.field(default_factory=dict)
    probabilities: Optional[List[Optional[WindowedMap]]] = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def refined(self) -> np.ndarray:
        """bool ``N``: True where the mask was refined, False where it was passed through."""
        flags = np.ones(len(self), dtype=bool)
        flags[list(self.passed_through)] = False
        return flags


class Refiner:
    """Turns coarse masks of an image into refined masks of the same image.

    Subclasses implement :meth:`refine_batch`; :meth:`refine` is the one-image convenience.
    """

    def refine(self, image: np.ndarray, masks: np.ndarray, *, probabilities: bool = False) -> RefineResult:
        """Refine the masks of one image.

        Args:
            image: uint8 ``H x W x 3`` RGB.
            masks: bool ``N x H x W`` (N may be 0), coarse masks at the image's size.
            probabilities: also return :attr:`RefineResult.probabilities`.
        """
        return self.refine_batch([image], [masks], probabilities=probabilities)[0]

    def refine_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                     probabilities: bool = False) -> List[RefineResult]:
        """Refine the masks of several images; ``masks[i]`` belongs to ``images[i]``.

        The result for an image does not depend on which other images share its batch.
        """
        raise NotImplementedError


def check_image_and_masks(image: np.ndarray, masks: np.ndarray) -> None:
    """Raise ``ValueError`` naming what was expected when ``image``/``masks`` break the conventions."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"image must be a uint8 numpy array of shape H x W x 3 (RGB), got {got}")
    if not isinstance(masks, np.ndarray) or masks.ndim != 3 or masks.dtype != np.bool_:
        got = f"{type(masks).__name__} {getattr(masks, 'dtype', '')} {getattr(masks, 'shape', '')}"
        raise ValueError(f"masks must be a bool numpy array of shape N x H x W, got {got}")
    if masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"masks are {masks.shape[1]}x{masks.shape[2]} but the image is {image.shape[0]}x{image.shape[1]}: "
            "masks must be at the image's original size"
        )
