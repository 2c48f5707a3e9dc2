"""Boundary IoU: hand-made cases with known answers, and pixel equality with the official formula."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from refine_hooks.data.masks import mask_iou
from refine_hooks.evaluation.boundary import (
    BoundaryIoUTable,
    boundary_dilation,
    boundary_iou,
    compute_boundaries,
    counts_to_crop,
    crop_to_counts,
    mask_to_boundary,
    rle_string_to_counts,
    rle_to_boundary,
)

from evaluation_helpers import official_boundary


def square(h, w, y0, x0, side):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def encode(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_dilation_follows_image_diagonal():
    assert boundary_dilation(100, 100) == round(0.02 * np.hypot(100, 100)) == 3
    assert boundary_dilation(480, 640) == 16  # 0.02 * 800
    assert boundary_dilation(10, 10) == 1  # never below one pixel
    assert boundary_dilation(480, 640, 0.005) == 4


def test_square_and_its_one_pixel_shift():
    h = w = 100
    side, d = 20, boundary_dilation(h, w)
    a, b = square(h, w, 40, 40, side), square(h, w, 40, 41, side)
    band = side**2 - (side - 2 * d) ** 2
    assert mask_to_boundary(a).sum() == band
    # Both bands: the overlap of the squares minus the union of the two (shifted) inner squares.
    inter = side * (side - 1) - (side - 2 * d) * (side - 2 * d + 1)
    assert boundary_iou(a, b) == pytest.approx(inter / (2 * band - inter))
    assert mask_iou(a[None], b[None])[0] == pytest.approx(side * (side - 1) / (side * (side + 1)))
    assert boundary_iou(a, b) < mask_iou(a[None], b[None])[0]


def test_thin_ring_is_all_boundary():
    h = w = 100  # d = 3
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - 50, xx - 50)
    ring = (r >= 20) & (r < 24)  # 4 px thick < 2d: every pixel is within d of the background
    assert (mask_to_boundary(ring) == ring).all()
    other = (r >= 21) & (r < 25)
    assert boundary_iou(ring, other) == pytest.approx(mask_iou(ring[None], other[None])[0])


def test_mask_touching_the_image_border_has_boundary_there():
    h, w = 60, 80  # d = 2
    d = boundary_dilation(h, w)
    full = np.ones((h, w), bool)
    band = mask_to_boundary(full)
    assert band.sum() == h * w - (h - 2 * d) * (w - 2 * d)
    assert band[:, :d].all() and band[:d].all() and not band[d:-d, d:-d].any()
    left = np.zeros((h, w), bool)
    left[10:50, :30] = True
    assert mask_to_boundary(left)[20:40, :d].all()


def test_tiny_masks_band_covers_everything_so_boundary_iou_is_mask_iou():
    rng = np.random.default_rng(0)
    h, w = 100, 100  # d = 3: any mask at most 6 px thick is all boundary
    for _ in range(20):
        a = square(h, w, *rng.integers(0, 94, 2), int(rng.integers(1, 7)))
        b = square(h, w, *rng.integers(0, 94, 2), int(rng.integers(1, 7)))
        b |= np.roll(a, int(rng.integers(-2, 3)), axis=1)
        assert (mask_to_boundary(a) == a).all()
        assert boundary_iou(a, b) == pytest.approx(mask_iou(a[None], b[None])[0])


def random_masks(rng, n):
    for k in range(n):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        kind = k % 4
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:
            yy, xx = np.mgrid[:h, :w]
            m = np.hypot(yy - rng.integers(0, h), xx - rng.integers(0, w)) < rng.integers(1, 50)
        elif kind == 2:
            m = np.ones((h, w), bool)
        else:
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h) :, rng.integers(0, w) :] = True
        yield m, (0.02, 0.05, 0.1, 0.001)[k % 4]


def test_matches_official_formula_on_full_masks_and_rles():
    rng = np.random.default_rng(1)
    for mask, ratio in random_masks(rng, 200):
        ref = official_boundary(mask, ratio)
        assert (mask_to_boundary(mask, ratio) == ref).all()
        got = rle_to_boundary(encode(mask), ratio)
        assert got["counts"] == encode(ref)["counts"]  # identical canonical RLE


def test_rle_counts_and_crops_round_trip():
    rng = np.random.default_rng(2)
    for mask, _ in random_masks(rng, 100):
        h, w = mask.shape
        rle = encode(mask)
        counts = rle_string_to_counts(rle["counts"])
        assert counts.sum() == h * w
        decoded = counts_to_crop(counts, h, w)
        full = np.zeros((h, w), bool)
        if decoded is not None:
            crop, x0, y0 = decoded
            full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()  # tight box
            again = crop_to_counts(crop, x0, y0, h, w)
            assert mask_utils.frPyObjects({"size": [h, w], "counts": again.astype(np.uint32)}, h, w)["counts"] \
                == rle["counts"]
        assert (full == mask).all()


def test_bad_rle_size_is_reported():
    rle = encode(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="4x5"):
        counts_to_crop(rle_string_to_counts(rle["counts"]), 4, 5)


def test_parallel_equals_serial_and_keeps_order():
    rng = np.random.default_rng(3)
    rles = [encode(m) for m, _ in random_masks(rng, 60)]
    serial = compute_boundaries(rles, workers=1, progress=False)
    parallel = compute_boundaries(rles, workers=2, chunk_size=7, progress=False)
    assert [r["counts"] for r in serial] == [r["counts"] for r in parallel]


def test_table_combines_min_of_mask_and_boundary_iou_and_keeps_crowd_mask_iou():
    h = w = 100
    gt = [square(h, w, 40, 40, 20), square(h, w, 10, 10, 30)]
    dt = [square(h, w, 40, 41, 20), square(h, w, 12, 10, 30), square(h, w, 80, 80, 5)]
    g = [{"id": i + 1, "segmentation": encode(m)} for i, m in enumerate(gt)]
    d = [{"id": i + 1, "segmentation": encode(m)} for i, m in enumerate(dt)]
    for min_iou in (0.0, 0.5):
        table = BoundaryIoUTable(workers=1, progress=False, min_iou=min_iou)
        table.add("k", d, g, [0, 1])
        table.compute()
        ious = table.ious("k")
        mask_ious = np.asarray(mask_utils.iou([x["segmentation"] for x in d], [x["segmentation"] for x in g], [0, 1]))
        assert ious[0, 0] == pytest.approx(min(mask_ious[0, 0], boundary_iou(dt[0], gt[0])))
        assert (ious[:, 1] == mask_ious[:, 1]).all()  # crowd column: pycocotools' crowd mask IoU
        assert ious[2, 0] == 0.0
        assert (ious <= mask_ious + 1e-12).all()
    assert table.n_computed == 2  # only the pair that can match needed boundaries
