"""``MaskRefinementHook``: refine the masks of whatever detector the runner holds, at validation and
test time, by adding one line to ``custom_hooks``.

Why the hook wraps ``val_step`` / ``test_step``: mmengine's ``ValLoop.run_iter`` and ``TestLoop.run_iter``
call ``model.val_step`` / ``test_step``, hand the outputs to ``evaluator.process`` and only then call
``after_val_iter`` / ``after_test_iter``, so changing the outputs in an ``after_*_iter`` hook is too
late for the metrics. The hook therefore replaces the step method of ``runner.model`` (the DDP wrapper
under DDP, whose step calls the inner model's) by one that refines the predictions before returning
them, in ``before_val`` / ``before_test``, and restores it in ``after_val`` / ``after_test``. Training
steps are never touched.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from .predictions import RefineStats
from .refined_detector import RefinedDetector
from .refiner_setup import RefineOptions, RefinerSpec, build_on_device, module_device


@HOOKS.register_module()
class MaskRefinementHook(Hook):
    """Refine ``pred_instances.masks`` during validation and test.

    Works for any mmdet instance segmentation detector (Mask R-CNN's bool masks, Mask2Former's
    float 0/1 masks with empty boxes, SOLOv2's masks without boxes) and under DDP (each rank refines its
    own predictions on its own device). Scores and labels are kept; see
    :func:`~refine_hooks.mmdet.predictions.refine_data_samples` for what is added to ``pred_instances``.

    Args:
        refiner: refiner config for :func:`refine_hooks.refiners.build_refiner`
            (e.g. ``dict(type='SAMRefiner', model_type='vit_h')``) or a built refiner. It is built on
            first use and runs on the detector's device.
        score_thr: refine only detections with at least this score; the others keep their masks.
        keep_unrefined: also store the detector's masks as ``pred_instances.unrefined_masks``.
        boxes_from_refined_masks: None (auto): a refined detection whose box was derived from its mask
            (Mask2Former) or is empty (SOLOv2) gets its refined mask's box, box-head boxes (Mask R-CNN) are
            kept; True: every refined detection gets its refined mask's box; False: only empty boxes.
        image_source: ``'auto'`` (read ``img_path``, else rebuild from the batch inputs), ``'img_path'``
            or ``'inputs'``. The log line after each run says which was used.
        input_channel_order: channel order of the batch inputs before the data preprocessor
            (``'bgr'`` for mmdet's ``LoadImageFromFile``).
        refine_val, refine_test: refine during validation / test.
    """

    priority = "NORMAL"

    def __init__(
        self,
        refiner: RefinerSpec,
        score_thr: float = 0.0,
        keep_unrefined: bool = False,
        boxes_from_refined_masks: Optional[bool] = None,
        image_source: str = "auto",
        input_channel_order: str = "bgr",
        refine_val: bool = True,
        refine_test: bool = True,
    ):
        self.options = RefineOptions(score_thr, keep_unrefined, boxes_from_refined_masks, image_source,
                                     input_channel_order)
        self.refiner_spec = refiner
        self.refiner = None
        self.refine_val = refine_val
        self.refine_test = refine_test
        self.stats: Optional[RefineStats] = None  # counts of the current / last run
        self._wrapped: Dict[str, object] = {}  # step name -> the model it was wrapped on

    # --------------------------------------------------------------------------- hook points
    def before_val(self, runner) -> None:
        if self.refine_val:
            self._wrap(runner, "val_step")

    def after_val(self, runner) -> None:
        self._unwrap(runner, "val_step", "val")

    def before_test(self, runner) -> None:
        if self.refine_test:
            self._wrap(runner, "test_step")

    def after_test(self, runner) -> None:
        self._unwrap(runner, "test_step", "test")

    # --------------------------------------------------------------------------- internals
    def _wrap(self, runner, name: str) -> None:
        model = runner.model
        if self._wrapped.get(name) is model and name in model.__dict__:
            self.stats = RefineStats()
            return  # a run that raised left the wrapper in place; keep using it
        inner = model.module if is_model_wrapper(model) else model
        if isinstance(inner, RefinedDetector):
            print_log(f"{type(self).__name__}: the model is a RefinedDetector, which refines already; the hook "
                      "does nothing", logger="current", level=logging.WARNING)
            return
        device = module_device(model)
        # Built on first use, then moved to wherever the model is now.
        self.refiner = build_on_device(self.refiner if self.refiner is not None else self.refiner_spec, device,
                                       type(self).__name__)
        self.stats = RefineStats()
        original = getattr(model, name)

        def step(data):
            outputs = original(data)
            self._refine(data, outputs)
            return outputs

        # An instance attribute shadows the class's method; deleting it restores the method.
        setattr(model, name, step)
        self._wrapped[name] = model

    def _unwrap(self, runner, name: str, phase: str) -> None:
        model = self._wrapped.pop(name, None)
        if model is None:
            return
        model.__dict__.pop(name, None)
        print_log(f"{type(self).__name__} ({phase}): {self.stats.text()}", logger="current")

    def _refine(self, data, outputs) -> None:
        inputs = data.get("inputs") if isinstance(data, dict) else None
        self.options.refine(self.refiner, outputs, inputs, self.stats)
