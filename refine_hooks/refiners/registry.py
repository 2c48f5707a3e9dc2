"""Build a refiner from a config dict, as configs of mmdet, detectron2 and our tools describe it."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from ..sam import SamEngine, build_sam_model
from .base import Refiner
from .samrefiner import SAMRefiner


def build_samrefiner(
    *,
    model_type: str = "vit_h",
    checkpoint=None,
    device: str = "cpu",
    precision: str = "fp32",
    decoder_chunk_size: int = 64,
    batch_invariant=None,
    download: bool = True,
    **hyper_parameters: Any,
) -> SAMRefiner:
    """A :class:`SAMRefiner` on a SAM built by :func:`refine_hooks.sam.build_sam_model`."""
    model = build_sam_model(model_type, checkpoint, download=download)
    engine = SamEngine(model, device=device, precision=precision, decoder_chunk_size=decoder_chunk_size, batch_invariant=batch_invariant)
    return SAMRefiner(engine, **hyper_parameters)


REFINER_BUILDERS: Dict[str, Callable[..., Refiner]] = {"SAMRefiner": build_samrefiner}


def build_refiner(config: Mapping[str, Any]) -> Refiner:
    """``build_refiner(dict(type='SAMRefiner', model_type='vit_h', checkpoint=None, device='cuda', ...))``."""
    config = dict(config)
    kind = config.pop("type", "SAMRefiner")
    if kind not in REFINER_BUILDERS:
        raise KeyError(f"unknown refiner type {kind!r}; available: {', '.join(REFINER_BUILDERS)}")
    return REFINER_BUILDERS[kind](**config)
