"""Refiners: coarse masks in, refined masks out."""

from .base import PASS_BELOW_MIN_AREA, PASS_EMPTY, PASS_SAM_EMPTY, Refiner, RefineResult, check_image_and_masks
from .phoenix import Phoenix, build_phoenix
from .registry import REFINER_BUILDERS, build_refiner, build_samrefiner, check_refiner_config, refiner_options
from .samrefiner import SAMRefiner

__all__ = [
    "PASS_BELOW_MIN_AREA",
    "PASS_EMPTY",
    "PASS_SAM_EMPTY",
    "Phoenix",
    "REFINER_BUILDERS",
    "Refiner",
    "RefineResult",
    "SAMRefiner",
    "build_phoenix",
    "build_refiner",
    "build_samrefiner",
    "check_refiner_config",
    "check_image_and_masks",
    "refiner_options",
]
