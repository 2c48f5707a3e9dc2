"""MMDetection 3.x integration: add refinement to a config you already have.

::

    custom_imports = dict(imports=['refine_hooks.mmdet'], allow_failed_imports=False)
    custom_hooks = [dict(type='MaskRefinementHook', refiner=dict(type='SAMRefiner', model_type='vit_h'))]

Importing this package registers, in mmdet's registries:

- ``MaskRefinementHook`` (HOOKS): refine the masks of the runner's detector at validation / test;
- ``RefinedDetector`` (MODELS): ``dict(type='RefinedDetector', detector=..., refiner=...)``;
- ``CocoBoundaryMetric``, ``LVISBoundaryMetric`` (METRICS): mask AP and Boundary AP;
- ``PseudoLabelRefineHook`` (HOOKS): refined pseudo labels at the end of a self-training round;
- uncertainty-aware training on them (:mod:`refine_hooks.mmdet.uncertainty`): ``UncertaintyCocoDataset``,
  ``LoadUncertainty``, ``UncertaintyAwareFCNMaskHead``, ``UncertaintyAwareMask2FormerHead`` and their losses;

and makes mmengine read local checkpoints with torch >= 2.6 and resolve ``mmdet::`` configs without
``pkg_resources`` (see :mod:`refine_hooks.mmdet.compat`).
Needs the ``mmdet`` extra (mmcv 2.1.0 with ops, mmengine 0.10.x, mmdet 3.3.0): ``bash tools/install_mmdet.sh``.
"""

try:
    import mmcv  # noqa: F401
    import mmdet  # noqa: F401
    import mmengine  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"refine_hooks.mmdet needs MMDetection 3.x ({error}). Install the `mmdet` extra with "
        "`bash tools/install_mmdet.sh [PYTHON]` (builds mmcv 2.1.0 with its ops, then installs "
        "mmengine 0.10.x and mmdet 3.3.0)."
    ) from error

from .compat import install_local_checkpoint_loader, install_package_lookup

install_local_checkpoint_loader()
install_package_lookup()

from .metrics import CocoBoundaryMetric, LVISBoundaryMetric  # noqa: E402
from .predictions import RefineStats, refine_data_samples  # noqa: E402
from .pseudo_label_hook import PseudoLabelRefineHook  # noqa: E402
from .refined_detector import RefinedDetector  # noqa: E402
from .refinement_hook import MaskRefinementHook  # noqa: E402
from .uncertainty import (LoadUncertainty, UncertaintyAwareCrossEntropyLoss, UncertaintyAwareDiceLoss,  # noqa: E402
                          UncertaintyAwareFCNMaskHead, UncertaintyAwareFocalLoss, UncertaintyAwareMask2FormerHead,
                          UncertaintyCocoDataset)

__all__ = [
    "CocoBoundaryMetric",
    "LVISBoundaryMetric",
    "LoadUncertainty",
    "MaskRefinementHook",
    "PseudoLabelRefineHook",
    "RefineStats",
    "RefinedDetector",
    "UncertaintyAwareCrossEntropyLoss",
    "UncertaintyAwareDiceLoss",
    "UncertaintyAwareFCNMaskHead",
    "UncertaintyAwareFocalLoss",
    "UncertaintyAwareMask2FormerHead",
    "UncertaintyCocoDataset",
    "refine_data_samples",
]
