"""Prediction readers: each format written the way its framework writes it, read back as COCO results."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from refine_hooks.data.predictions import load_predictions
from refine_hooks.evaluation import evaluate_coco


@pytest.fixture()
def gt_and_results(synthetic_coco):
    gt, results = copy.deepcopy(synthetic_coco)
    gt["categories"] = gt["categories"][::-1]  # file order differs from sorted id order
    for r in results:
        r["bbox"] = [float(v) for v in mask_utils.toBbox({"size": r["segmentation"]["size"],
                                                          "counts": r["segmentation"]["counts"].encode()})]
    return gt, results[:200]


def same_results(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        assert x["score"] == pytest.approx(y["score"])
        assert x["segmentation"] == y["segmentation"]
        assert isinstance(x["segmentation"]["counts"], str)
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-4)


def test_coco_json_and_mmdet_segm_json(tmp_path, gt_and_results):
    _, results = gt_and_results
    for name in ("coco_instances_results.json", "results.segm.json"):
        path = tmp_path / name
        path.write_text(json.dumps(results))
        same_results(load_predictions(str(path)), results)


def test_scored_annotation_file_and_unscored_error(tmp_path, gt_and_results):
    gt, results = gt_and_results
    anns = [dict(r, id=i + 1, iscrowd=0) for i, r in enumerate(results)]
    path = tmp_path / "refined.json"
    path.write_text(json.dumps({"images": gt["images"], "categories": gt["categories"], "annotations": anns}))
    same_results(load_predictions(str(path)), results)
    del anns[3]["score"]
    path.write_text(json.dumps({"images": gt["images"], "annotations": anns}))
    with pytest.raises(ValueError, match="no 'score'"):
        load_predictions(str(path))


def test_detectron2_instances_predictions_pth(tmp_path, gt_and_results):
    gt, results = gt_and_results
    # COCOEvaluator: instances_to_coco_json gives contiguous ids (dataset ids in sorted order).
    contiguous = {cat_id: i for i, cat_id in enumerate(sorted(c["id"] for c in gt["categories"]))}
    per_image = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(dict(r, category_id=contiguous[r["category_id"]]))
    predictions = [{"image_id": image_id, "instances": insts} for image_id, insts in per_image.items()]
    path = tmp_path / "instances_predictions.pth"
    torch.save(predictions, str(path))
    loaded = load_predictions(str(path), gt)
    same_results(loaded, [r for image_id in per_image for r in results if r["image_id"] == image_id])
    assert evaluate_coco(copy.deepcopy(gt), loaded, progress=False) == \
        evaluate_coco(copy.deepcopy(gt), results, progress=False)
    predictions[0]["instances"][0]["category_id"] = len(contiguous)
    torch.save(predictions, str(path))
    with pytest.raises(ValueError, match="outside 0"):
        load_predictions(str(path), gt)
    with pytest.raises(ValueError, match="ground-truth"):
        load_predictions(str(path))


def mmdet_samples(gt, results, cat_ids, rle_masks=True):
    """DumpDetResults output: DetDataSample.to_dict() with tensors on CPU and RLE-encoded masks."""
    label = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    samples = []
    for img in gt["images"]:
        mine = [r for r in results if r["image_id"] == img["id"]]
        boxes = torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (r["bbox"] for r in mine)],
                             dtype=torch.float32).reshape(-1, 4)
        masks = [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()} for r in mine]
        if not rle_masks:
            masks = torch.from_numpy(np.stack([mask_utils.decode(m).astype(bool) for m in masks])
                                     if masks else np.zeros((0, img["height"], img["width"]), bool))
        samples.append({"img_id": img["id"], "img_path": img["file_name"], "ori_shape": (img["height"], img["width"]),
                        "pred_instances": {"bboxes": boxes, "scores": torch.tensor([r["score"] for r in mine]),
                                           "labels": torch.tensor([label[r["category_id"]] for r in mine],
                                                                  dtype=torch.int64),
                                           "masks": masks}})
    return samples


@pytest.mark.parametrize("rle_masks", [True, False])
def test_mmdet_pickle(tmp_path, gt_and_results, rle_masks):
    gt, results = gt_and_results
    cat_ids = [c["id"] for c in gt["categories"]]  # CocoDataset.cat_ids: the file's category order
    path = tmp_path / "results.pkl"
    with open(path, "wb") as f:
        pickle.dump(mmdet_samples(gt, results, cat_ids, rle_masks), f, protocol=2)
    loaded = load_predictions(str(path), gt)
    expected = sorted(results, key=lambda r: r["image_id"])  # samples are per image
    same_results(loaded, [dict(r, score=float(np.float32(r["score"]))) for r in expected])


def test_mmdet_pickle_with_restricted_classes(tmp_path, gt_and_results):
    gt, results = gt_and_results
    classes = [c["name"] for c in gt["categories"][1:3]][::-1]  # config order does not matter
    kept_ids = [c["id"] for c in gt["categories"] if c["name"] in classes]  # file order
    mine = [r for r in results if r["category_id"] in kept_ids]
    path = tmp_path / "results.pkl"
    with open(path, "wb") as f:
        pickle.dump(mmdet_samples(gt, mine, kept_ids), f)
    loaded = load_predictions(str(path), gt, classes=classes)
    assert sorted((r["image_id"], r["category_id"]) for r in loaded) == sorted((r["image_id"], r["category_id"]) for r in mine)
    with pytest.raises(ValueError, match="not category names"):
        load_predictions(str(path), gt, classes=["no such class"])


def test_unknown_format(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="unknown prediction format"):
        load_predictions(str(path))
