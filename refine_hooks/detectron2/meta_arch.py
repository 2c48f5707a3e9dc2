"""Refine the masks a Detectron2 meta-architecture predicts, at inference, with one config line.

``RefinedMetaArch`` (a ``META_ARCH_REGISTRY`` entry) builds the meta-architecture named in
``MODEL.REFINER.BASE_META_ARCHITECTURE`` as a subclass whose ``forward`` refines
``instances.pred_masks`` in eval mode. Being a subclass (not a wrapper) keeps everything else of the
detector as it was: its state-dict keys (plain detector checkpoints load unchanged, and the refiner's
SAM weights never enter the detector's checkpoints), its attributes, training and DDP.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes
from detectron2.utils.logger import log_every_n_seconds

from refine_hooks.refiners import detections as core
from refine_hooks.refiners.registry import RefinerSpec, build_on_device, module_device

from .images import IMAGE_SOURCES, SOURCE_INPUTS, SOURCE_PATH, check_input_format, image_getter

logger = logging.getLogger(__name__)

SOURCE_LABELS = {SOURCE_PATH: "read from file_name", SOURCE_INPUTS: "rebuilt from the batch's image"}


@dataclasses.dataclass
class RefinementOptions:
    """How a refined meta-architecture refines (``cfg.MODEL.REFINER`` in yacs configs).

    Attributes:
        refiner: refiner config for :func:`refine_hooks.refiners.build_refiner`
            (e.g. ``dict(type="SAMRefiner", model_type="vit_h")``) or a built refiner; built on first
            use, on the detector's device.
        score_thr: refine detections with at least this score; the others keep their masks.
        keep_unrefined: also keep the detector's masks as ``instances.unrefined_masks``.
        boxes_from_refined_masks: see :func:`refine_hooks.refiners.detections.updated_boxes`.
        image_source: ``auto`` (read ``file_name``, else rebuild from ``image``), ``file_name`` or ``inputs``.
        input_format: channel order of the batch's ``image`` tensors (``cfg.INPUT.FORMAT``: BGR or RGB).
    """

    refiner: RefinerSpec
    score_thr: float = 0.0
    keep_unrefined: bool = False
    boxes_from_refined_masks: Optional[bool] = None
    image_source: str = "auto"
    input_format: str = "BGR"

    def __post_init__(self):
        if self.image_source not in IMAGE_SOURCES:
            raise ValueError(f"image_source must be one of {IMAGE_SOURCES}, got {self.image_source!r}")
        check_input_format(self.input_format)


class RefinementMixin:
    """Refines ``instances.pred_masks`` of the outputs of ``forward`` in eval mode (see the module).

    Adds ``instances.refined`` (bool ``N``), ``instances.refine_iou`` (float32 ``N``, NaN where not
    refined) and, with ``keep_unrefined``, ``instances.unrefined_masks``. ``refinement_stats`` counts
    what was refined since construction. Test-time augmentation (``GeneralizedRCNNWithTTA``) calls
    ``inference`` directly and is not refined.
    """

    def __init__(self, *args: Any, refinement: Optional[Any] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if refinement is None:
            raise ValueError(f"{type(self).__name__} needs refinement=RefinementOptions(...) (or a dict of its fields)")
        if isinstance(refinement, dict):
            refinement = RefinementOptions(**refinement)
        self.refinement = refinement
        # Not a submodule: SAM's weights stay out of the detector's state dict and checkpoints.
        self.__dict__["_refiner"] = None
        self.refinement_stats = core.RefineStats(image_sources={SOURCE_PATH: 0, SOURCE_INPUTS: 0},
                                                 source_labels=dict(SOURCE_LABELS))

    @property
    def refiner(self):
        """The refiner, built on the detector's device on first use."""
        if self.__dict__["_refiner"] is None:
            device = module_device(self)
            self.__dict__["_refiner"] = build_on_device(self.refinement.refiner, device, type(self).__name__,
                                                        log=logger.info)
        return self.__dict__["_refiner"]

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        outputs = super().forward(batched_inputs)
        if self.training:
            return outputs
        self.refine_outputs(batched_inputs, outputs)
        return outputs

    def refine_outputs(self, batched_inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        """Refine, in place, the ``instances`` of each output dict (other outputs are left alone).

        Args:
            batched_inputs: the dicts the model was called with (``image``: ``3 x h x w`` tensor in
                ``input_format``; optional ``file_name``, ``height``, ``width``).
            outputs: the model's outputs for them (``instances`` with ``pred_masks`` at ``height x width``).
        """
        options = self.refinement
        batch = []
        for output in outputs:
            instances = output.get("instances") if isinstance(output, dict) else None
            if instances is None or not instances.has("pred_masks"):
                batch.append(None)
                continue
            batch.append(core.Detections(
                masks=instances.pred_masks,
                scores=instances.scores if instances.has("scores") else None,
                boxes=instances.pred_boxes.tensor if instances.has("pred_boxes") else None,
            ))
        # Outputs without masks (a detection-only model) must not load SAM: the core never calls the
        # refiner when no entry has masks.
        refiner = self.refiner if any(entry is not None for entry in batch) else None
        get_image = image_getter(batched_inputs, image_source=options.image_source,
                                 input_format=options.input_format, stats=self.refinement_stats)
        results = core.refine_detections(refiner, batch, get_image, score_thr=options.score_thr,
                                         boxes_from_refined_masks=options.boxes_from_refined_masks,
                                         stats=self.refinement_stats)
        for output, entry, result in zip(outputs, batch, results):
            if result is None:
                continue
            instances = output["instances"]
            if options.keep_unrefined:
                instances.unrefined_masks = entry.masks.clone()
            instances.pred_masks = result.masks
            instances.refined = result.refined
            instances.refine_iou = result.refine_iou
            if result.boxes is not None:
                instances.pred_boxes = Boxes(result.boxes)
        log_every_n_seconds(logging.INFO, f"{type(self).__name__}: {self.refinement_stats.text()}", n=60, name=__name__)


_REFINED_CLASSES: Dict[type, type] = {}


def refined_meta_arch(base: type) -> type:
    """The subclass of the meta-architecture class ``base`` that refines its masks at inference.

    Its constructor takes the base class's arguments plus ``refinement=RefinementOptions(...)``. The class
    is named ``Refined<Base>`` and is reachable as ``refine_hooks.detectron2.meta_arch.Refined<Base>``
    (LazyConfig can save and load configs that use it).
    """
    if not isinstance(base, type) or not issubclass(base, torch.nn.Module):
        raise TypeError(f"can only refine a meta-architecture class (an nn.Module subclass), got {base!r}")
    if issubclass(base, RefinementMixin):
        return base
    if base not in _REFINED_CLASSES:
        name = f"Refined{base.__name__}"
        cls = type(name, (RefinementMixin, base), {"__module__": __name__, "__qualname__": name,
                                                   "__doc__": f"{base.__name__} whose masks are refined at inference."})
        setattr(sys.modules[__name__], name, cls)
        _REFINED_CLASSES[base] = cls
    return _REFINED_CLASSES[base]


def __getattr__(name: str):
    """``Refined<Base>`` for any registered meta-architecture class (for LazyConfig's string targets)."""
    if name.startswith("Refined") and name[len("Refined"):] in META_ARCH_REGISTRY:
        return refined_meta_arch(META_ARCH_REGISTRY.get(name[len("Refined"):]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@META_ARCH_REGISTRY.register()
def RefinedMetaArch(cfg):  # noqa: N802 - registry entries are named like classes
    """Build ``cfg.MODEL.REFINER.BASE_META_ARCHITECTURE`` with refinement (``MODEL.META_ARCHITECTURE: RefinedMetaArch``).

    Needs :func:`~refine_hooks.detectron2.add_refiner_config` on ``cfg``.
    """
    from .config import refinement_options_from_config

    if "REFINER" not in cfg.MODEL:
        raise KeyError("MODEL.META_ARCHITECTURE is RefinedMetaArch but the config has no MODEL.REFINER: "
                       "call refine_hooks.detectron2.add_refiner_config(cfg) before merging the config file")
    base_name = cfg.MODEL.REFINER.BASE_META_ARCHITECTURE
    if base_name == "RefinedMetaArch":
        raise ValueError("MODEL.REFINER.BASE_META_ARCHITECTURE must name the detector's meta-architecture "
                         "(e.g. GeneralizedRCNN), not RefinedMetaArch")
    base = META_ARCH_REGISTRY.get(base_name)
    return refined_meta_arch(base)(cfg, refinement=refinement_options_from_config(cfg))


def with_refiner(model_config: Any, **refinement: Any) -> Any:
    """LazyConfig: ``model = with_refiner(model, refiner=dict(type="SAMRefiner", model_type="vit_h"))``.

    Replaces the ``_target_`` of a LazyConfig model node by its refined subclass and sets its
    ``refinement`` (the fields of :class:`RefinementOptions`); returns the node.
    """
    target = model_config._target_
    if isinstance(target, str):
        from detectron2.config.instantiate import locate

        target = locate(target)
    model_config._target_ = refined_meta_arch(target)
    model_config.refinement = dict(refinement)
    RefinementOptions(**model_config.refinement)  # check the fields now, not at instantiation
    return model_config
