"""CocoBoundaryMetric / LVISBoundaryMetric give the numbers tools/evaluate.py gives on the same predictions."""

import json
import os

import numpy as np
import pytest

from frameworks import import_framework

import_framework("mmdet")  # skips this module without mmdet, fails it when REFINE_HOOKS_REQUIRE names mmdet

import torch  # noqa: E402
from mmdet.registry import METRICS  # noqa: E402
from scipy import ndimage  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401
from refine_hooks.data.masks import segmentation_to_mask  # noqa: E402

from mmdet_test_utils import CLASSES, run_evaluate_tool, to_lvis  # noqa: E402


def predictions(gt_path, seed=0):
    """Data samples as the evaluator hands them to metrics: GT masks eroded / dilated / shifted, plus false
    positives, with random scores; labels are mmdet's (category order of the file)."""
    with open(gt_path) as f:
        gt = json.load(f)
    rng = np.random.default_rng(seed)
    label_of = {c["id"]: i for i, c in enumerate(gt["categories"])}
    samples = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        masks, labels = [], []
        for a in gt["annotations"]:
            if a["image_id"] != img["id"]:
                continue
            mask = segmentation_to_mask(a["segmentation"], h, w)
            op = rng.integers(0, 3)
            mask = ndimage.binary_erosion(mask, iterations=2) if op == 0 else (
                ndimage.binary_dilation(mask, iterations=2) if op == 1 else np.roll(mask, 3, axis=1))
            masks.append(mask)
            labels.append(label_of[a["category_id"]])
        for _ in range(2):  # false positives
            mask = np.zeros((h, w), bool)
            y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
            mask[y:y + 20, x:x + 20] = True
            masks.append(mask)
            labels.append(int(rng.integers(0, len(CLASSES))))
        samples.append({"img_id": img["id"], "pred_instances": {
            "masks": torch.from_numpy(np.stack(masks)), "labels": torch.tensor(labels),
            "scores": torch.from_numpy(rng.random(len(masks)).astype(np.float32))}})
    return samples


@pytest.mark.parametrize("protocol", ["coco", "lvis"])
def test_metric_equals_evaluate_tool(protocol, coco, tmp_path):
    _, ann = coco
    if protocol == "lvis":
        ann = to_lvis(ann, str(tmp_path / "lvis.json"))
    metric = METRICS.build(dict(type="LVISBoundaryMetric" if protocol == "lvis" else "CocoBoundaryMetric",
                                ann_file=ann, outfile_prefix=str(tmp_path / "preds")))
    metric.dataset_meta = dict(classes=CLASSES)
    samples = predictions(ann)
    metric.process({}, samples)
    metrics = metric.evaluate(size=len(samples))

    tool = run_evaluate_tool(ann, str(tmp_path / "preds.segm.json"), str(tmp_path / "eval.json"),
                             *(["--lvis"] if protocol == "lvis" else []))
    names = (("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf") if protocol == "lvis" else
             ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"))
    tool_names = dict(mAP="AP", mAP_50="AP50", mAP_75="AP75", mAP_s="APs", mAP_m="APm", mAP_l="APl")
    assert len(metrics) == 2 * len(names)
    for iou_type in ("segm", "boundary"):
        for name in names:
            ours = metrics[f"{protocol}/{iou_type}_{name}"]
            assert ours == pytest.approx(tool[f"{iou_type}/{tool_names.get(name, name)}"], abs=1e-12)
    assert 0 < metrics[f"{protocol}/segm_{names[1]}"] < 1  # neither trivial nor perfect predictions


def test_metric_names_the_image_without_masks(coco):
    _, ann = coco
    metric = METRICS.build(dict(type="CocoBoundaryMetric", ann_file=ann))
    metric.dataset_meta = dict(classes=CLASSES)
    with pytest.raises(ValueError, match="image 10.*no pred_instances.masks"):
        metric.process({}, [{"img_id": 10, "img_path": "x.png", "pred_instances": {"scores": torch.ones(1)}}])


def test_metric_refuses_a_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        METRICS.build(dict(type="CocoBoundaryMetric", ann_file=str(tmp_path / "nothing.json")))
