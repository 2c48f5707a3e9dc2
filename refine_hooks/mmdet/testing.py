"""Run mmdet's test loop with refinement on any config: the library behind ``tools/mmdet_test.py``."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from mmengine.config import Config


HOOK = "MaskRefinementHook"


def resolve_config_path(config: str) -> str:
    """A config path, or ``mmdet::<path>`` inside the installed mmdet package (its ``.mim/configs``)."""
    if config.startswith("mmdet::"):
        import mmdet

        path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", config[len("mmdet::"):])
    else:
        path = config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {config} not found ({path})")
    return path


def build_test_config(
    config: str,
    checkpoint: Optional[str] = None,
    *,
    work_dir: Optional[str] = None,
    cfg_options: Optional[Dict[str, Any]] = None,
    refiner: Optional[Dict[str, Any]] = None,
    hook_options: Optional[Dict[str, Any]] = None,
    refine: bool = True,
    launcher: str = "none",
) -> Config:
    """The config ``Runner.from_cfg`` tests with.

    A config without refinement (e.g. a stock ``mmdet::`` config) gets ``MaskRefinementHook``;
    ``refiner`` entries (``model_type``, ``checkpoint``, hyper-parameters) and ``hook_options``
    (``score_thr``, ``keep_unrefined``, ...) update the hook (or ``RefinedDetector``) of the config;
    ``refine=False`` removes the hook, to test the same config without refinement.
    """
    cfg = Config.fromfile(resolve_config_path(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    imports = list(cfg.get("custom_imports", {}).get("imports", []))
    if "refine_hooks.mmdet" not in imports:
        cfg.custom_imports = dict(imports=imports + ["refine_hooks.mmdet"], allow_failed_imports=False)
        import refine_hooks.mmdet  # noqa: F401  (Config.fromfile imported the others already)
    hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != HOOK]
    ours = [h for h in cfg.get("custom_hooks", []) if h.get("type") == HOOK]
    if cfg.model.get("type") == "RefinedDetector":
        if not refine:
            cfg.model = cfg.model.detector
        else:
            cfg.model.refiner = dict(cfg.model.refiner, **(refiner or {}))
            cfg.model.update(hook_options or {})
    elif refine:
        hook = ours[0] if ours else dict(type=HOOK, refiner=dict(type="SAMRefiner", model_type="vit_h"))
        hook["refiner"] = dict(hook["refiner"], **(refiner or {}))
        hook.update(hook_options or {})
        hooks.append(hook)
    cfg.custom_hooks = hooks
    if checkpoint is not None:
        cfg.load_from = checkpoint
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", os.path.splitext(os.path.basename(config))[0])
    cfg.launcher = launcher
    return cfg


def run_test(cfg: Config, predictions_out: Optional[str] = None) -> Dict[str, float]:
    """``Runner.from_cfg(cfg).test()``: the metrics.

    ``predictions_out``: also dump the predictions there (a ``.pkl``), with mmdet's ``DumpDetResults`` as
    the last metric, as mmdet's ``tools/test.py --out`` does: what ``tools/evaluate.py`` and
    :func:`refine_hooks.data.predictions.read_mmdet_pickle` read. The refinement hook changes the
    predictions before any metric sees them, so the dump holds the refined masks.
    """
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    if predictions_out is not None:
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=predictions_out))
    return runner.test()
