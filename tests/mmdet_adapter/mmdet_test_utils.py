"""A tiny COCO dataset on disk and small-image, random-weight configs built from our configs/mmdet files
(which inherit mmdet's stock configs), for tests that run real mmengine Runners on CPU."""

from __future__ import annotations

import copy
import json
import importlib.util
import os
import sys
from typing import Any, Dict, List, Optional


from tiny_coco import CATEGORIES, CLASSES, make_tiny_coco  # noqa: F401 (re-exported for the mmdet tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "mmdet")
TINY_REFINER = dict(type="SAMRefiner", model_type="tiny", checkpoint=None, iterations=2)
# A Runner seeds every RNG when it is built, from a fresh random seed unless the config names one, so a
# torch.manual_seed before Runner.from_cfg has no effect: the random weights would differ run to run.
SEEDED = dict(seed=0)


def pipeline(scale=(160, 128), train: bool = False) -> List[Dict[str, Any]]:
    steps: List[Dict[str, Any]] = [dict(type="LoadImageFromFile")]
    if train:
        steps.append(dict(type="LoadAnnotations", with_bbox=True, with_mask=True))
    steps.append(dict(type="Resize", scale=scale, keep_ratio=True))
    steps.append(dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")))
    return steps


def dataloader(root: str, ann_file: str, *, train: bool = False, batch_size: int = 2) -> Dict[str, Any]:
    dataset = dict(type="CocoDataset", data_root=root, ann_file=os.path.basename(ann_file),
                   data_prefix=dict(img="images/"), metainfo=dict(classes=CLASSES), test_mode=not train,
                   pipeline=pipeline(train=train))
    if train:
        dataset["filter_cfg"] = dict(filter_empty_gt=True, min_size=1)
    return dict(batch_size=batch_size, num_workers=0, persistent_workers=False, drop_last=False,
                sampler=dict(type="DefaultSampler", shuffle=train), dataset=dataset)


def small_model(cfg, kind: str) -> None:
    """Random weights (no pretrained download), 2 classes, thresholds that let random weights detect."""
    model = cfg.model
    model.backbone.init_cfg = None
    if kind == "mask_rcnn":
        model.roi_head.bbox_head.num_classes = len(CLASSES)
        model.roi_head.mask_head.num_classes = len(CLASSES)
        model.test_cfg.rpn.nms_pre = 200
        model.test_cfg.rpn.max_per_img = 50
        model.test_cfg.rcnn.score_thr = 0.0
        model.test_cfg.rcnn.max_per_img = 10
        model.train_cfg.rpn_proposal.nms_pre = 200
        model.train_cfg.rpn_proposal.max_per_img = 50
    elif kind == "solov2":
        model.mask_head.num_classes = len(CLASSES)
        model.test_cfg.nms_pre = 50
        model.test_cfg.score_thr = 0.0
        model.test_cfg.filter_thr = 0.0
        model.test_cfg.max_per_img = 10
    elif kind == "mask2former":
        head = model.panoptic_head
        head.num_things_classes, head.num_stuff_classes = len(CLASSES), 0
        head.loss_cls.class_weight = [1.0] * len(CLASSES) + [0.1]
        model.panoptic_fusion_head.num_things_classes = len(CLASSES)
        model.panoptic_fusion_head.num_stuff_classes = 0
        model.test_cfg.max_per_image = 10
    else:
        raise ValueError(kind)


def runner_config(config_name: str, kind: str, root: str, ann_file: str, work_dir: str, *,
                  hook: Optional[Dict[str, Any]] = None, dump: Optional[str] = None):
    """Our config ``configs/mmdet/<config_name>`` made small: tiny data, random weights, tiny SAM refiner."""
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(CONFIGS, config_name))
    small_model(cfg, kind)
    cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.test_dataloader = dataloader(root, ann_file)
    cfg.val_dataloader = copy.deepcopy(cfg.test_dataloader)
    evaluator: List[Dict[str, Any]] = [dict(type="CocoBoundaryMetric", ann_file=ann_file)]
    if dump is not None:
        evaluator.append(dict(type="DumpDetResults", out_file_path=dump))
    cfg.test_evaluator = evaluator
    cfg.val_evaluator = copy.deepcopy(evaluator[:1])
    if hook is not None:
        cfg.custom_hooks = [hook]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, save_last=False)
    cfg.log_level = "WARNING"
    cfg.randomness = SEEDED
    return cfg


def run_evaluate_tool(gt: str, dt: str, out: str, *extra: str) -> Dict[str, float]:
    """``tools/evaluate.py`` itself on a prediction file; returns its metric dict (``segm/AP``, ...)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        spec = importlib.util.spec_from_file_location("evaluate_tool", os.path.join(REPO, "tools", "evaluate.py"))
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
    finally:
        sys.path.pop(0)
    code = tool.main(["--gt", gt, "--dt", dt, "--classes", *CLASSES, "--out", out, "--no-progress", *extra])
    assert code == 0
    with open(out) as f:
        summary = json.load(f)
    return summary["predictions"][os.path.abspath(dt)]["metrics"]


def to_lvis(coco_path: str, out_path: str) -> str:
    """The tiny COCO file with the fields LVIS evaluation needs (frequencies, per-image category lists)."""
    with open(coco_path) as f:
        data = json.load(f)
    data = copy.deepcopy(data)
    for category, frequency in zip(data["categories"], ("f", "r")):
        category.update(frequency=frequency, synset=f"{category['name']}.n.01", image_count=1, instance_count=1)
    present = {}
    for a in data["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    all_ids = {c["id"] for c in data["categories"]}
    for img in data["images"]:
        img["not_exhaustive_category_ids"] = []
        img["neg_category_ids"] = sorted(all_ids - present.get(img["id"], set()))
    with open(out_path, "w") as f:
        json.dump(data, f)
    return out_path
