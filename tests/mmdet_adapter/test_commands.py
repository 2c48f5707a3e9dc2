"""The documented commands, as subprocesses: mmdet's own tools/test.py and our tools/mmdet_test.py on a
config that inherits ours (as a user's would), with a plain detector checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from frameworks import import_framework

import_framework("mmdet")  # skips this module without mmdet, fails it when REFINE_HOOKS_REQUIRE names mmdet

import torch  # noqa: E402
from mmengine.runner import save_checkpoint  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401

from mmdet_test_utils import CONFIGS, REPO, TINY_REFINER, dataloader, runner_config  # noqa: E402


def user_config(path, root, ann):
    """A small config inheriting configs/mmdet/mask-rcnn_r50_fpn_1x_coco_refined.py."""
    base = os.path.join(CONFIGS, "mask-rcnn_r50_fpn_1x_coco_refined.py")
    loader = dict(dataloader(root, ann), _delete_=True)
    text = f"""_base_ = {base!r}
model = dict(backbone=dict(init_cfg=None),
             roi_head=dict(bbox_head=dict(num_classes=2), mask_head=dict(num_classes=2)),
             test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(score_thr=0.0, max_per_img=10)))
test_dataloader = {loader!r}
test_evaluator = dict(_delete_=True, type='CocoBoundaryMetric', ann_file={ann!r})
custom_hooks = [dict(type='MaskRefinementHook', refiner={TINY_REFINER!r})]
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def test_mmdet_tools_test_and_our_wrapper(coco, tmp_path):
    root, ann = coco
    register_all_modules(init_default_scope=True)
    cfg = runner_config("mask-rcnn_r50_fpn_1x_coco_refined.py", "mask_rcnn", root, ann, str(tmp_path / "w"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = str(tmp_path / "mask_rcnn.pth")
    save_checkpoint({"state_dict": model.state_dict(), "meta": {"seed": np.int64(0)}}, checkpoint)
    config = user_config(str(tmp_path / "my_config.py"), root, ann)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    import mmdet

    mmdet_test = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "tools", "test.py")
    mmdet_out = str(tmp_path / "mmdet_refined.pkl")
    done = subprocess.run([sys.executable, mmdet_test, config, checkpoint, "--work-dir", str(tmp_path / "a"),
                           "--out", mmdet_out], env=env, capture_output=True, text=True, timeout=480, cwd=str(tmp_path))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "MaskRefinementHook (test): refined" in log and "coco/boundary_mAP" in log

    # our wrapper's --out means what mmdet's does: the predictions (refined), for tools/evaluate.py
    ours, coarse, metrics_path = (str(tmp_path / name) for name in ("refined.pkl", "coarse.pkl", "metrics.json"))
    tool = os.path.join(REPO, "tools", "mmdet_test.py")
    done = subprocess.run([sys.executable, tool, config, checkpoint, "--work-dir", str(tmp_path / "b"), "--keep-unrefined",
                           "--out", ours, "--metrics-out", metrics_path],
                          env=env, capture_output=True, text=True, timeout=480, cwd=str(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with open(metrics_path) as f:
        metrics = json.load(f)
    assert "coco/segm_mAP" in metrics and "coco/boundary_mAP" in metrics
    done = subprocess.run([sys.executable, tool, config, checkpoint, "--work-dir", str(tmp_path / "c"), "--no-refine",
                           "--out", coarse], env=env, capture_output=True, text=True, timeout=480, cwd=str(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    from refine_hooks.data.predictions import load_predictions
    from refine_hooks.evaluation.files import evaluate_files

    refined_predictions = load_predictions(ours, ann)
    assert refined_predictions == load_predictions(mmdet_out, ann)  # the same dump as mmdet's tools/test.py
    assert len(load_predictions(coarse, ann)) == len(refined_predictions) > 0  # the same detections, unrefined
    summary, text = evaluate_files(ann, coarse, compare_path=ours, iou_types=["segm"], progress=False)
    assert "segm/AP" in summary["delta"] and "coarse.pkl vs refined.pkl" in text
