"""A trained refiner (Phoenix checkpoint from the real trainer) after a real mmdet Mask R-CNN."""

import pickle

import numpy as np

from frameworks import import_framework

import_framework("mmdet")  # skips without mmdet, fails when REFINE_HOOKS_REQUIRE names it

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from refine_hooks.data.images import load_image  # noqa: E402
from refine_hooks.mmdet import MaskRefinementHook  # noqa: E402
from refine_hooks.refiners import build_refiner  # noqa: E402
from tiny_refiner import train_tiny_refiner, with_task_prompt  # noqa: E402

from mmdet_test_utils import runner_config  # noqa: E402


def test_mask_rcnn_with_a_phoenix_checkpoint(coco, tmp_path):
    root, ann = coco
    # with SUM's task prompt: the refiner dict's "task" picks its row
    checkpoint = with_task_prompt(train_tiny_refiner(str(tmp_path / "refiner")), str(tmp_path / "task.pth"))
    refiner = dict(type="Phoenix", model_type="tiny", refiner_checkpoint=checkpoint, iterations=2, task="salient_object")
    dump = str(tmp_path / "preds.pkl")
    cfg = runner_config("mask-rcnn_r50_fpn_1x_coco_refined.py", "mask_rcnn", root, ann, str(tmp_path / "work"),
                        hook=dict(type="MaskRefinementHook", refiner=refiner, keep_unrefined=True), dump=dump)
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    metrics = runner.test()
    hook = [h for h in runner.hooks if isinstance(h, MaskRefinementHook)][0]
    assert hook.stats.refined > 0 and "coco/boundary_mAP" in metrics
    with open(dump, "rb") as handle:
        sample = pickle.load(handle)[0]
    pred = sample["pred_instances"]
    flags = pred["refined"].numpy()
    unrefined = pred["unrefined_masks"].numpy()[flags]
    refined = np.stack([mask_utils.decode(r).astype(bool) for r in pred["masks"]])[flags]
    # What the hook wrote is what the Phoenix refiner returns for the detector's masks on that image.
    expected = build_refiner(refiner).refine(load_image(sample["img_path"]), unrefined)
    np.testing.assert_array_equal(refined, expected.masks)
    entity = build_refiner(dict(refiner, task="entity")).refine(load_image(sample["img_path"]), unrefined)
    assert not np.array_equal(entity.masks, expected.masks)  # the task the dict names is the one used
