"""Prompt mining from coarse masks: pure numpy/torch, no model code."""

from .boxes import EmbeddingSimilarity, elastic_boxes
from .masks import GAUSSIAN_KINDS, dense_mask_prompt, gaussian_weights
from .points import InteriorDistance, interior_distance, negative_point, point_prompts
from .stm import should_merge, split_then_merge

__all__ = [
    "EmbeddingSimilarity",
    "GAUSSIAN_KINDS",
    "InteriorDistance",
    "dense_mask_prompt",
    "elastic_boxes",
    "gaussian_weights",
    "interior_distance",
    "negative_point",
    "point_prompts",
    "should_merge",
    "split_then_merge",
]
