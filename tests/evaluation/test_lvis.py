"""LVIS evaluation: lvis-api's federated rules and numbers, boundary per the official recipe, NumPy 2."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refine_hooks.evaluation import BoundaryLVISEval, evaluate_lvis
from refine_hooks.evaluation.lvis import LVISEval, LVISResults, as_lvis, load_lvis_results

from evaluation_helpers import make_lvis, official_boundary


@pytest.fixture()
def lvis_data(synthetic_coco):
    gt, results = synthetic_coco
    return make_lvis(gt), copy.deepcopy(results)


def plain_lvis(tmp_path, gt, results, max_dets=300):
    """lvis-api used the usual way: annotation file on disk, results list."""
    path = tmp_path / "lvis_gt.json"
    path.write_text(json.dumps(gt))
    E = LVISEval(str(path), LVISResults(str(path), copy.deepcopy(results), max_dets=max_dets), "segm")
    E.params.max_dets = max_dets
    E.run()
    return E


def test_numpy_is_not_patched_globally():
    import lvis.eval

    assert not hasattr(np, "float")  # NumPy 2 stays NumPy 2 for everyone else
    assert lvis.eval.np.float is float and lvis.eval.np.cumsum is np.cumsum


def test_segm_equals_lvis_api(tmp_path, lvis_data):
    gt, results = lvis_data
    reference = plain_lvis(tmp_path, gt, results)
    out = evaluate_lvis(gt, results, iou_types=["segm"], progress=False)
    assert {f"segm/{k}": float(v) for k, v in reference.results.items()} == dict(out)
    for key in ("segm/APr", "segm/APc", "segm/APf", "segm/AR@300"):
        assert key in out and out[key] >= 0
    assert "catIds=  r]" in out.tables["segm"]


def test_max_dets_limits_detections_per_image(tmp_path, lvis_data):
    gt, results = lvis_data
    reference = plain_lvis(tmp_path, gt, results, max_dets=5)
    out = evaluate_lvis(gt, results, iou_types=["segm"], max_dets=5, progress=False)
    assert out["segm/AP"] == float(reference.results["AP"]) and "segm/AR@5" in out


def test_federated_rules(lvis_data):
    gt, results = lvis_data
    base = evaluate_lvis(copy.deepcopy(gt), results, progress=False)
    # A confident detection of a category the image neither annotates nor lists as negative: ignored.
    img = next(i for i in gt["images"] if i["neg_category_ids"])
    annotated = {a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"]}
    unknown = [c["id"] for c in gt["categories"] if c["id"] not in annotated and c["id"] not in img["neg_category_ids"]]
    assert unknown
    box = np.zeros((img["height"], img["width"]), np.uint8)
    box[10:40, 10:40] = 1
    rle = mask_utils.encode(np.asfortranarray(box))
    rle["counts"] = rle["counts"].decode()
    extra = {"image_id": img["id"], "score": 1.0, "segmentation": rle}
    ignored = evaluate_lvis(copy.deepcopy(gt), results + [dict(extra, category_id=unknown[0])], progress=False)
    assert dict(ignored) == dict(base)
    # The same detection of a category on the image's negative list is a false positive.
    negative = evaluate_lvis(copy.deepcopy(gt), results + [dict(extra, category_id=img["neg_category_ids"][0])],
                             progress=False)
    assert negative["segm/AP"] < base["segm/AP"]


class OfficialBoundaryLVISEval(LVISEval):
    """Boundary AP for LVIS as the official API defines it (full-size boundaries, min with mask IoU)."""

    def compute_iou(self, img_id, cat_id):
        gt, dt = self._get_gt_dt(img_id, cat_id)
        if len(gt) == 0 and len(dt) == 0:
            return []
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
        crowd = [0] * len(gt)
        ious = np.array(mask_utils.iou([d["segmentation"] for d in dt], [g["segmentation"] for g in gt], crowd))
        if not (len(gt) and len(dt)):
            return ious

        def band(rle):
            return mask_utils.encode(np.asfortranarray(official_boundary(mask_utils.decode(rle)).astype(np.uint8)))

        b = np.array(mask_utils.iou([band(d["segmentation"]) for d in dt], [band(g["segmentation"]) for g in gt], crowd))
        return np.minimum(ious, b)


def test_boundary_equals_official_recipe_and_is_below_segm(lvis_data):
    gt, results = lvis_data
    logging.getLogger("lvis").setLevel(logging.ERROR)
    ours_gt = as_lvis(copy.deepcopy(gt))
    ours = BoundaryLVISEval(ours_gt, load_lvis_results(ours_gt, copy.deepcopy(results), 300), workers=2,
                            progress=False)
    ours.run()
    ref_gt = as_lvis(copy.deepcopy(gt))
    ref = OfficialBoundaryLVISEval(ref_gt, load_lvis_results(ref_gt, copy.deepcopy(results), 300), "segm")
    ref.run()
    np.testing.assert_array_equal(ours.eval["precision"], ref.eval["precision"])
    out = evaluate_lvis(gt, results, progress=False)
    for k in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert out[f"boundary/{k}"] <= out[f"segm/{k}"] + 1e-12, k


def test_lvis_fields_are_required(synthetic_coco):
    gt, results = synthetic_coco
    with pytest.raises(ValueError, match="neg_category_ids"):
        evaluate_lvis(copy.deepcopy(gt), results, progress=False)
