"""The only code that touches ``segment_anything`` and its relatives."""

from .build import TinySamConfig, build_random_sam, build_sam_model, build_tiny_sam, save_tiny_checkpoint
from .checkpoints import CheckpointUnavailableError, cache_dir, ensure_checkpoint
from .engine import ImageEmbedding, SamEngine, resized_shape
from .registry import MODEL_SPECS, ModelSpec, get_spec

__all__ = [
    "CheckpointUnavailableError",
    "ImageEmbedding",
    "MODEL_SPECS",
    "ModelSpec",
    "SamEngine",
    "TinySamConfig",
    "build_random_sam",
    "build_sam_model",
    "build_tiny_sam",
    "cache_dir",
    "ensure_checkpoint",
    "get_spec",
    "resized_shape",
    "save_tiny_checkpoint",
]
