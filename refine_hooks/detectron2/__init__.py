"""Detectron2 adapter: registry entries and small classes, no algorithm.

- :func:`add_refiner_config` adds ``cfg.MODEL.REFINER``; ``MODEL.META_ARCHITECTURE: "RefinedMetaArch"``
  then refines the masks of the meta-architecture named in ``MODEL.REFINER.BASE_META_ARCHITECTURE``
  (``GeneralizedRCNN`` by default) at inference; :func:`with_refiner` does the same for LazyConfig models.
- :class:`COCOBoundaryEvaluator` / :class:`LVISBoundaryEvaluator`: mask AP and Boundary AP as
  ``DatasetEvaluator`` s.
- :class:`PseudoLabelRefineHook`: refined pseudo labels for the next self-training round.
- uncertainty-aware training on them (:mod:`refine_hooks.detectron2.uncertainty`): the
  ``UncertaintyAwareMaskRCNNConvUpsampleHead`` mask head, :class:`UncertaintyDatasetMapper`,
  :func:`register_coco_instances_with_uncertainty`, :func:`add_uncertainty_config`.

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
from .uncertainty import (UncertaintyAwareMaskRCNNConvUpsampleHead, UncertaintyDatasetMapper,  # noqa: E402
                          UncertaintyTrainer, add_uncertainty_config, build_uncertainty_train_loader,
                          register_coco_instances_with_uncertainty)

__all__ = [
    "COCOBoundaryEvaluator",
    "LVISBoundaryEvaluator",
    "PseudoLabelRefineHook",
    "RefinedMetaArch",
    "RefinementOptions",
    "UncertaintyAwareMaskRCNNConvUpsampleHead",
    "UncertaintyDatasetMapper",
    "UncertaintyTrainer",
    "add_refiner_config",
    "add_uncertainty_config",
    "build_uncertainty_train_loader",
    "refined_meta_arch",
    "refinement_options_from_config",
    "register_coco_instances_with_uncertainty",
    "with_refiner",
]
