"""COCO evaluation: segm equals plain pycocotools; boundary equals the official Boundary-AP recipe."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from refine_hooks.evaluation import BoundaryCOCOeval, evaluate_coco, evaluate_lvis
from refine_hooks.evaluation.coco import as_coco, load_results, summarize_coco

from evaluation_helpers import official_boundary

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def plain_pycocotools(gt, results, max_dets=(1, 10, 100)):
    """pycocotools used the usual way, on results without boxes (so areas are mask areas)."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dets = [{k: v for k, v in r.items() if k != "bbox"} for r in copy.deepcopy(results)]
        E = COCOeval(coco, coco.loadRes(dets), "segm")
        E.params.maxDets = list(max_dets)
        E.evaluate()
        E.accumulate()
        start = out.tell()
        if len(max_dets) == 3:  # pycocotools' summarize() only knows three maxDets values
            E.summarize()
        table = out.getvalue()[start:]
    return E, table


class OfficialBoundaryCOCOeval(COCOeval):
    """Boundary AP the way the official API defines it: every mask's full-size boundary from the paper's
    formula, ``min(mask IoU, boundary IoU)`` on non-crowd columns, crowd columns keep mask IoU."""

    def computeIoU(self, imgId, catId):
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return []
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")][: self.params.maxDets[-1]]
        iscrowd = [int(g["iscrowd"]) for g in gt]
        mask_ious = np.array(mask_utils.iou([d["segmentation"] for d in dt], [g["segmentation"] for g in gt], iscrowd))
        if not (len(gt) and len(dt)):
            return mask_ious

        def band(rle):
            return mask_utils.encode(np.asfortranarray(official_boundary(mask_utils.decode(rle)).astype(np.uint8)))

        b = np.array(mask_utils.iou([band(d["segmentation"]) for d in dt], [band(g["segmentation"]) for g in gt], iscrowd))
        crowd = np.array(iscrowd, bool)
        mask_ious[:, ~crowd] = np.minimum(mask_ious[:, ~crowd], b[:, ~crowd])
        return mask_ious


def run(E):
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
    return E


def test_segm_equals_pycocotools(coco_data):
    gt, results = coco_data
    reference, table = plain_pycocotools(gt, results)
    out = evaluate_coco(gt, results, iou_types=["segm"], progress=False)
    assert [out[f"segm/{k}"] for k in STATS] == [float(v) for v in reference.stats]
    assert out.tables["segm"].strip() == table.strip()  # the very table pycocotools prints
    assert any("mask area" in n for n in out.notes)


def test_boxes_are_dropped_so_size_buckets_use_mask_area(coco_data):
    gt, results = coco_data
    boxed = copy.deepcopy(results)
    for r in boxed:
        r["bbox"] = [0.0, 0.0, 120.0, 90.0]  # huge boxes: every detection would be "large"
    with_boxes = evaluate_coco(copy.deepcopy(gt), boxed, iou_types=["segm"], progress=False)
    without = evaluate_coco(copy.deepcopy(gt), results, iou_types=["segm"], progress=False)
    assert dict(with_boxes) == dict(without)
    assert any(f"{len(results)} of {len(results)} predictions had a box" in n for n in with_boxes.notes)


@pytest.mark.parametrize("workers", [1, 2])
def test_boundary_equals_official_recipe(coco_data, workers):
    gt, results = coco_data
    coco = as_coco(copy.deepcopy(gt))
    dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    ours = run(BoundaryCOCOeval(coco, load_results(coco, copy.deepcopy(dets)), workers=workers, progress=False))
    coco2 = as_coco(copy.deepcopy(gt))
    ref = run(OfficialBoundaryCOCOeval(coco2, load_results(coco2, copy.deepcopy(dets)), iouType="segm"))
    np.testing.assert_array_equal(ours.eval["precision"], ref.eval["precision"])
    np.testing.assert_array_equal(ours.eval["recall"], ref.eval["recall"])
    assert ours.table.n_computed < ours.table.n_masks  # pairs that cannot match were skipped
    # Computing every entry exactly gives the official IoU matrices entry for entry.
    coco3 = as_coco(copy.deepcopy(gt))
    full = run(BoundaryCOCOeval(coco3, load_results(coco3, copy.deepcopy(dets)), exhaustive=True, progress=False))
    for key, value in ref.ious.items():
        np.testing.assert_allclose(full.ious[key], value, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(full.eval["precision"], ref.eval["precision"])


def test_boundary_ap_never_above_segm_ap(coco_data):
    gt, results = coco_data
    out = evaluate_coco(gt, results, progress=False)
    for k in STATS:
        if out[f"segm/{k}"] >= 0:
            assert out[f"boundary/{k}"] <= out[f"segm/{k}"] + 1e-12, k
    assert out["boundary/AP"] < out["segm/AP"]  # perturbed masks: boundaries are visibly worse


def test_max_dets_uses_the_last_value_everywhere(coco_data):
    gt, results = coco_data
    reference, _ = plain_pycocotools(gt, results, max_dets=(1, 10, 20))
    stats, _ = summarize_coco(reference)
    out = evaluate_coco(gt, results, iou_types=["segm"], max_dets=20, progress=False)
    assert out["segm/AR20"] == stats["AR20"]
    assert out["segm/AP"] == float(np.mean(reference.eval["precision"][:, :, :, 0, -1][
        reference.eval["precision"][:, :, :, 0, -1] > -1]))


def test_perfect_and_empty_predictions(coco_data):
    gt, _ = coco_data
    perfect = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        perfect.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                        "segmentation": copy.deepcopy(a["segmentation"])})  # polygons are converted
    out = evaluate_coco(copy.deepcopy(gt), perfect, progress=False)
    assert out["segm/AP"] == pytest.approx(1.0) and out["boundary/AP"] == pytest.approx(1.0)
    empty = evaluate_coco(copy.deepcopy(gt), [], progress=False)
    assert empty["segm/AP"] == 0.0 and empty["boundary/AP"] == 0.0


def test_bad_predictions_are_named(coco_data):
    gt, results = coco_data
    bad = copy.deepcopy(results[:3])
    bad[1]["category_id"] = 999
    with pytest.raises(ValueError, match="999"):
        evaluate_coco(gt, bad, progress=False)
    bad = copy.deepcopy(results[:3])
    bad[2]["image_id"] = 12345
    with pytest.raises(ValueError, match="12345"):
        evaluate_coco(gt, bad, progress=False)
    bad = copy.deepcopy(results[:3])
    bad[0]["segmentation"]["size"] = [10, 10]
    with pytest.raises(ValueError, match=r"prediction #0 \(image"):
        evaluate_coco(gt, bad, progress=False)


def test_shared_ground_truth_cache_does_not_leak_detections(coco_data):
    gt, results = coco_data
    coco = as_coco(gt)
    cache = {}
    perturbed = copy.deepcopy(results)
    for r in perturbed[::2]:
        r["score"] = 1.0 - r["score"]
    first = evaluate_coco(coco, results, progress=False, boundary_cache=cache)
    n_cached = len(cache)
    second = evaluate_coco(coco, perturbed, progress=False, boundary_cache=cache)
    alone = evaluate_coco(copy.deepcopy(gt), perturbed, progress=False)
    assert n_cached > 0 and dict(second) == dict(alone)
    assert dict(first) != dict(second)


def test_max_dets_below_ten(coco_data):
    gt, results = coco_data
    reference, _ = plain_pycocotools(gt, results, max_dets=(1, 5))
    precision, recall = reference.eval["precision"], reference.eval["recall"]

    def mean(s):
        return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0  # pycocotools: -1 = no GT

    out = evaluate_coco(gt, results, iou_types="segm", max_dets=5, progress=False)
    assert out["segm/AP"] == mean(precision[:, :, :, 0, -1])
    assert out["segm/AR1"] == mean(recall[:, :, 0, 0]) and out["segm/AR5"] == mean(recall[:, :, 0, -1])
    assert out["segm/ARm"] == mean(recall[:, :, 2, -1]) and out["segm/ARl"] == mean(recall[:, :, 3, -1])
    assert "segm/AR10" not in out


def test_ground_truth_and_settings_that_pycocotools_would_trip_on_are_named(coco_data):
    from evaluation_helpers import make_lvis

    gt, results = coco_data
    with pytest.raises(ValueError, match="an LVIS annotation file.*--lvis"):
        evaluate_coco(make_lvis(gt), results, progress=False)
    no_crowd = copy.deepcopy(gt)
    del no_crowd["annotations"][3]["iscrowd"]
    with pytest.raises(ValueError, match=f"annotation id {no_crowd['annotations'][3]['id']} .* has no 'iscrowd'"):
        evaluate_coco(no_crowd, results, progress=False)
    with pytest.raises(ValueError, match="result list"):
        evaluate_coco(results, results, progress=False)
    for evaluate, ground_truth in ((evaluate_coco, gt), (evaluate_lvis, make_lvis(gt))):
        repeated = copy.deepcopy(ground_truth)
        repeated["annotations"][4]["id"] = repeated["annotations"][1]["id"]
        with pytest.raises(ValueError, match=r"annotations\[1\] and annotations\[4\] have the same id .* evaluated twice"):
            evaluate(repeated, results, progress=False)
        del repeated["annotations"][2]["id"]
        with pytest.raises(ValueError, match=r"annotations\[2\] has no 'id'"):
            evaluate(repeated, results, progress=False)
    with pytest.raises(ValueError, match="dilation_ratio must be a number greater than 0, got -1"):
        evaluate_coco(copy.deepcopy(gt), results, ["boundary"], dilation_ratio=-1, progress=False)
