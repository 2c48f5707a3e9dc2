"""Detectron2 adapter: registry entries and small classes, no algorithm.

- :func:`add_refiner_config` adds ``cfg.MODEL.REFINER``; ``MODEL.META_ARCHITECTURE: "RefinedMetaArch"``
  then refines the masks of the meta-architecture named in ``MODEL.REFINER.BASE_META_ARCHITECTURE``
  (``GeneralizedRCNN`` by default) at inference; :func:`with_refiner` does the same for LazyConfig models.
- :class:`COCOBoundaryEvaluator` / :class:`LVISBoundaryEvaluator`: mask AP and Boundary AP as
  ``DatasetEvaluator`` s.
- :class:`PseudoLabelRefineHook`: refined pseudo labels for the next self-training round.

Detectron2 is not on PyPI: ``tools/install_detectron2.sh`` builds it from source (docs/detectron2.md).
"""

try:
    import detectron2  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "refine_hooks.detectron2 needs Detectron2, which is not on PyPI: `bash tools/install_detectron2.sh "
        "PYTHON` builds it (and installs Mask2Former) from GitHub, see docs/detectron2.md; or build it yourself "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html)"
    ) from error

from .config import add_refiner_config, refinement_options_from_config  # noqa: E402
from .evaluation import COCOBoundaryEvaluator, LVISBoundaryEvaluator  # noqa: E402
from .hooks import PseudoLabelRefineHook  # noqa: E402
from .meta_arch import RefinedMetaArch, RefinementOptions, refined_meta_arch, with_refiner  # noqa: E402

__all__ = [
    "COCOBoundaryEvaluator",
    "LVISBoundaryEvaluator",
    "PseudoLabelRefineHook",
    "RefinedMetaArch",
    "RefinementOptions",
    "add_refiner_config",
    "refined_meta_arch",
    "refinement_options_from_config",
    "with_refiner",
]
