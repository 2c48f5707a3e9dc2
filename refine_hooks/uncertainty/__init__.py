"""SUM-style uncertainty for refined pseudo-labels: maps, their files, and the losses that use them.

- :mod:`.maps`: ``u = |σ(s) − σ(r)|`` between a coarse mask's probabilities and the refiner's (SUM Sec.
  3.2.3), the soft version of a binary coarse mask, per-record summaries;
- :mod:`.sidecar`: the ``<OUT>.uncertainty.bin`` file the pseudo-label job writes (and the detector
  probabilities the hooks hand it), checked against the annotation file it is used with;
- :mod:`.losses`: uncertainty-aware focal, Dice and BCE losses and prompt sampling (Sec. 3.2.1-3.2.2).

The MMDetection and Detectron2 pieces that train with them live in ``refine_hooks.mmdet.uncertainty`` and
``refine_hooks.detectron2.uncertainty``. See docs/uncertainty.md.
"""

from .losses import certainty_from_resampled_levels, sample_by_certainty, ua_bce_with_logits, ua_dice_loss, ua_focal_loss
from .maps import (BINARY_COARSE_WIDTH, DEFAULT_THETA, LEVELS, binary_mask_probability, certainty_from_levels,
                   certainty_summary, coarse_probability, quantize, uncertainty_map)
from .sidecar import (KIND_COARSE_PROBABILITY, KIND_UNCERTAINTY, MapEntry, MapFile, MapFileError,
                      check_against_annotations, coarse_probability_path, uncertainty_path, write_map_file)

__all__ = [
    "BINARY_COARSE_WIDTH",
    "DEFAULT_THETA",
    "KIND_COARSE_PROBABILITY",
    "KIND_UNCERTAINTY",
    "LEVELS",
    "MapEntry",
    "MapFile",
    "MapFileError",
    "binary_mask_probability",
    "certainty_from_levels",
    "certainty_from_resampled_levels",
    "certainty_summary",
    "check_against_annotations",
    "coarse_probability",
    "coarse_probability_path",
    "quantize",
    "sample_by_certainty",
    "ua_bce_with_logits",
    "ua_dice_loss",
    "ua_focal_loss",
    "uncertainty_map",
    "uncertainty_path",
    "write_map_file",
]
