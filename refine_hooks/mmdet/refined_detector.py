"""``RefinedDetector``: the explicit form, ``model = dict(type='RefinedDetector', detector=..., refiner=...)``."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS

from .predictions import RefineStats
from .refiner_setup import RefineOptions, RefinerSpec, build_on_device, module_device

PREFIX = "detector."


@MODELS.register_module()
class RefinedDetector(BaseDetector):
    """Any mmdet detector whose predicted masks are refined.

    Training (``mode='loss'``) and ``mode='tensor'`` are the inner detector's, unchanged; ``predict``
    refines the inner detector's predictions (see
    :func:`~refine_hooks.mmdet.predictions.refine_data_samples`). The inner detector's data preprocessor
    is this model's, so the inputs are prepared exactly as for the plain detector. A checkpoint of the
    plain detector (keys ``backbone.*``, ...) loads unchanged: keys without the ``detector.`` prefix are
    given it. The refiner's weights are not part of this model's state dict.

    Args:
        detector: config of the detector (any mmdet ``MODELS`` entry).
        refiner: refiner config for :func:`refine_hooks.refiners.build_refiner`, or a built refiner;
            built on first use, on the detector's device.
        score_thr, keep_unrefined, boxes_from_refined_masks, image_source, input_channel_order:
            as :class:`~refine_hooks.mmdet.MaskRefinementHook`. Images rebuilt from the inputs undo the
            data preprocessor's normalisation and channel conversion.
        data_preprocessor: must be None; the detector's own is used.
    """

    def __init__(
        self,
        detector: Dict[str, Any],
        refiner: RefinerSpec,
        score_thr: float = 0.0,
        keep_unrefined: bool = False,
        boxes_from_refined_masks: Optional[bool] = None,
        image_source: str = "auto",
        input_channel_order: str = "bgr",
        data_preprocessor: Optional[Dict[str, Any]] = None,
        init_cfg: Optional[Dict[str, Any]] = None,
    ):
        if data_preprocessor is not None:
            raise ValueError("RefinedDetector uses its detector's data_preprocessor; set it inside `detector`")
        options = RefineOptions(score_thr, keep_unrefined, boxes_from_refined_masks, image_source, input_channel_order)
        inner = MODELS.build(detector)
        super().__init__(data_preprocessor=None, init_cfg=init_cfg)
        self.detector = inner
        self.data_preprocessor = inner.data_preprocessor  # shared: same inputs as the plain detector
        self.refiner_spec = refiner
        self.refiner = None
        self.options = options
        self.stats = RefineStats()  # counts since construction
        self.register_load_state_dict_pre_hook(self._add_detector_prefix)

    @staticmethod
    def _add_detector_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                             error_msgs):
        """Rename ``backbone.x`` to ``detector.backbone.x`` when loading a plain detector's checkpoint."""
        own = [k for k in state_dict if k.startswith(prefix)]
        if any(k.startswith(prefix + PREFIX) for k in own):
            return  # a RefinedDetector checkpoint
        for key in own:
            state_dict[prefix + PREFIX + key[len(prefix):]] = state_dict.pop(key)

    # ----------------------------------------------------------------- the inner detector's behaviour
    def extract_feat(self, batch_inputs: torch.Tensor):
        return self.detector.extract_feat(batch_inputs)

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples):
        return self.detector.loss(batch_inputs, batch_data_samples)

    def _forward(self, batch_inputs: torch.Tensor, batch_data_samples=None):
        return self.detector._forward(batch_inputs, batch_data_samples)

    # ----------------------------------------------------------------- refinement
    def predict(self, batch_inputs: torch.Tensor, batch_data_samples, rescale: bool = True):
        """The detector's predictions with refined ``pred_instances.masks``.

        Args:
            batch_inputs: ``B x 3 x H x W`` float, as the data preprocessor made them.
            batch_data_samples: the batch's ``DetDataSample`` s.
        """
        results = self.detector.predict(batch_inputs, batch_data_samples, rescale=rescale)
        if self.refiner is None:
            self.refiner = build_on_device(self.refiner_spec, module_device(self.detector), type(self).__name__)
        preprocessor = self.data_preprocessor
        normalized = getattr(preprocessor, "_enable_normalize", False)
        self.options.refine(self.refiner, results, batch_inputs, self.stats,
                            channels_converted=bool(getattr(preprocessor, "_channel_conversion", False)),
                            mean=preprocessor.mean if normalized else None,
                            std=preprocessor.std if normalized else None)
        return results
