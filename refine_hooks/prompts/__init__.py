"""Prompt mining from coarse masks: pure numpy/torch, no model code."""

from .boxes import EmbeddingSimilarity, elastic_boxes
from .masks import GAUSSIAN_KINDS, dense_mask_prompt, gaussian_weights
from .points import DISTANCE_KINDS, InteriorDistance, interior_distance, negative_point, point_prompts
from .raster import raster_distance
from .stm import should_merge, split_then_merge

__all__ = [
    "DISTANCE_KINDS",
    "EmbeddingSimilarity",
    "GAUSSIAN_KINDS",
    "InteriorDistance",
    "dense_mask_prompt",
    "elastic_boxes",
    "gaussian_weights",
    "interior_distance",
    "negative_point",
    "point_prompts",
    "raster_distance",
    "should_merge",
    "split_then_merge",
]
