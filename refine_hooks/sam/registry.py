"""The SAM-family models we can build, where their official checkpoints live, and their checksums."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One buildable model.

    Attributes:
        name: registry name (``vit_b``, ``sam_hq_vit_h``, ...).
        family: ``sam`` (the ``segment_anything`` package) or ``sam_hq`` (``segment_anything_hq``).
        builder: the key of the family's own ``sam_model_registry``.
        url: the official checkpoint URL, or None for models that only exist as local files.
        md5: md5 of the official checkpoint file (the SAM file names carry its first 6 hex digits).
    """

    name: str
    family: str
    builder: str
    url: Optional[str]
    md5: Optional[str]

    @property
    def filename(self) -> Optional[str]:
        return None if self.url is None else self.url.rsplit("/", 1)[-1]


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_HQ_URL = "https://huggingface.co/lkeab/hq-sam/resolve/main/"

MODEL_SPECS: Dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("vit_b", "sam", "vit_b", _SAM_URL + "sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8"),
        ModelSpec("vit_l", "sam", "vit_l", _SAM_URL + "sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c"),
        ModelSpec("vit_h", "sam", "vit_h", _SAM_URL + "sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6"),
        ModelSpec("sam_hq_vit_b", "sam_hq", "vit_b", _HQ_URL + "sam_hq_vit_b.pth", "c6b8953247bcfdc8bb8ef91e36a6cacc"),
        ModelSpec("sam_hq_vit_l", "sam_hq", "vit_l", _HQ_URL + "sam_hq_vit_l.pth", "08947267966e4264fb39523eccc33f86"),
        ModelSpec("sam_hq_vit_h", "sam_hq", "vit_h", _HQ_URL + "sam_hq_vit_h.pth", "3560f6b6a5a6edacd814a1325c39640a"),
        # A small randomly initialised SAM for tests and demos; see build.TinySamConfig.
        ModelSpec("tiny", "tiny", "tiny", None, None),
        ModelSpec("tiny_hq", "tiny", "tiny_hq", None, None),
    ]
}


def get_spec(model_type: str) -> ModelSpec:
    """The spec of ``model_type``; ``KeyError`` listing the known names otherwise."""
    try:
        return MODEL_SPECS[model_type]
    except KeyError:
        raise KeyError(f"unknown model type {model_type!r}; known: {', '.join(MODEL_SPECS)}") from None
