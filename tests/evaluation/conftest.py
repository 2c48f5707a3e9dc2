"""Generated COCO data shared by the evaluation tests."""

from __future__ import annotations

import copy

import pytest

from refine_hooks.benchmarks.evaluation import make_synthetic_coco


@pytest.fixture(scope="session")
def synthetic_coco():
    """(gt dict, results list): 40 images 96x128 with crowd regions, empty images, false positives."""
    gt, results = make_synthetic_coco(40, 25, height=96, width=128, n_categories=6, max_gt=6,
                                      empty_fraction=0.2, crowd_fraction=0.4, seed=3)
    assert any(a["iscrowd"] for a in gt["annotations"])
    annotated = {a["image_id"] for a in gt["annotations"]}
    assert len(annotated) < len(gt["images"])  # some images have no annotation at all
    return gt, results


@pytest.fixture()
def coco_data(synthetic_coco):
    """Fresh copies (pycocotools converts segmentations in place)."""
    return copy.deepcopy(synthetic_coco[0]), copy.deepcopy(synthetic_coco[1])
