"""One rule for score thresholds (refine_hooks.scores), the same in the framework adapters' core and the job."""

import math

import numpy as np
import pytest
import torch

from refine_hooks.refiners import SAMRefiner
from refine_hooks.refiners.detections import Detections, RefineStats, refine_detections
from refine_hooks.sam import SamEngine
from refine_hooks.scores import meets_score_thr, record_score


def test_rule_on_numbers():
    scores = np.array([0.2, 0.5, 0.9, np.nan, -0.1])
    assert meets_score_thr(scores, 0.5).tolist() == [False, True, True, False, False]
    assert meets_score_thr(scores, 0.0).tolist() == [True, True, True, True, False]  # unknown: refined at 0
    assert meets_score_thr(scores, -1.0).tolist() == [True] * 5
    assert math.isnan(record_score({})) and math.isnan(record_score({"score": None}))
    assert math.isnan(record_score({"score": float("nan")})) and record_score({"score": 1}) == 1.0
    assert record_score({"score": "0.9"}) is None and record_score({"score": True}) is None


@pytest.mark.parametrize("score_thr", [0.0, 0.5])
def test_detections_without_scores_follow_the_rule(tiny_sam, scene, score_thr):
    image, masks = scene
    refiner = SAMRefiner(SamEngine(tiny_sam), iterations=1)
    stats = RefineStats()
    keep = masks[:3]
    scored = Detections(masks=torch.from_numpy(keep), scores=torch.tensor([0.9, 0.1, float("nan")]))
    unscored = Detections(masks=torch.from_numpy(keep), scores=None)
    out = refine_detections(refiner, [scored, unscored], lambda i, size: (image, "test"), score_thr=score_thr, stats=stats)
    selected = stats.refined + stats.passed_through  # detections handed to the refiner
    if score_thr == 0.0:  # everything goes to the refiner at the default threshold
        assert stats.below_score == 0 and selected == 6
    else:  # a positive threshold: only known scores that reach it
        assert stats.below_score == 5 and selected == 1
        assert not out[0].refined[1:].any() and not out[1].refined.any()
        assert torch.equal(out[1].masks, unscored.masks)
