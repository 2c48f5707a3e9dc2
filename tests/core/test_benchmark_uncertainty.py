"""The uncertainty benchmarks' accounting: the job suite's sidecar sizes, and the wrong-pixel counts of the
uncertainty suite against refiners whose answer is known."""

import numpy as np
import pytest

from refine_hooks.benchmarks import jobs, uncertainty


def test_stand_in_refiners_bracket_the_counts():
    rows = {row["refiner"].split(" ")[0]: row for row in uncertainty.run(num_images=2, height=64, width=80, objects=2, iterations=1)}
    oracle, shifted, identity = rows["oracle"], rows["shifted"], rows["identity"]
    # the oracle's refined label is the truth; every wrong coarse pixel disagrees with it by at least
    # σ(0.5 / 0.5) − σ(−0.5 / 0.5) = 0.46 > 1 − θ, so none is certain, and agreeing pixels are certain
    assert oracle["refined_wrong_certain"] == oracle["refined_wrong_uncertain"] == 0
    assert oracle["coarse_wrong_certain"] == 0 and oracle["coarse_wrong_uncertain"] == oracle["uncertain"] > 0
    # a refiner that changes nothing is certain everywhere, so the map cannot point at any error
    assert identity["uncertain"] == 0 and identity["coarse_wrong_certain"] > 0
    assert identity["coarse_wrong_certain"] == oracle["coarse_wrong_uncertain"]  # the same known errors
    assert 0 < shifted["coarse_wrong_among_certain"] < shifted["coarse_wrong_among_uncertain"]
    # both count the pixels of the coarse and true masks' joint box
    assert identity["certain"] + identity["uncertain"] == oracle["certain"] + oracle["uncertain"]


def test_corrupted_masks_have_the_known_wrong_regions():
    rng = np.random.RandomState(0)
    truth = np.zeros((60, 80), bool)
    truth[15:45, 20:60] = True
    coarse = uncertainty.corrupt(truth, rng)
    assert (coarse & ~truth).any() and (truth & ~coarse).any()  # false positives and false negatives


def test_job_benchmark_reports_sidecar_sizes():
    row = jobs.run("tiny", 3, num_images=2, height=48, width=64, workers=0, iterations=1, uncertainty=True)
    assert row["records_refined"] == 6
    assert row["sidecar_bytes"] > 0 and row["sidecar_bytes_per_mask"] == pytest.approx(row["sidecar_bytes"] / 6, abs=0.1)
    assert 0 < row["raw_window_bytes_per_mask"] <= 48 * 64
    assert row["band_rle_bytes_per_mask"] > 0 and 0 <= row["mean_certainty"] <= 1
