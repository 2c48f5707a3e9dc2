import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.resize import to_mask_input
from refine_hooks.prompts import (
    EmbeddingSimilarity,
    dense_mask_prompt,
    elastic_boxes,
    gaussian_weights,
    interior_distance,
    negative_point,
    point_prompts,
    should_merge,
    split_then_merge,
)


def _full_image_depth(mask):
    """Reference: distance of each foreground pixel to the nearest background pixel of the full image.

    scipy treats the outside of the array as foreground, like OpenCV and the authors' FastGeodis."""
    return distance_transform_edt(mask)


def _random_masks(seed, count=20, shape=(40, 50)):
    rng = np.random.RandomState(seed)
    masks = np.zeros((count,) + shape, dtype=bool)
    for mask in masks:
        for _ in range(rng.randint(1, 4)):
            y, x = rng.randint(0, shape[0]), rng.randint(0, shape[1])
            mask[max(0, y - rng.randint(1, 12)) : y + rng.randint(1, 12), max(0, x - rng.randint(1, 12)) : x + rng.randint(1, 12)] = True
    return masks


def test_crop_distance_equals_full_image_distance():
    masks = _random_masks(1)
    for mask, box in zip(masks, masks_to_xyxy(masks)):
        depth = interior_distance(mask, box)
        reference = _full_image_depth(mask)
        x1, y1, x2, y2 = box
        np.testing.assert_array_equal(depth.values, reference[y1 : y2 + 1, x1 : x2 + 1])
        x, y, value = depth.peak
        flat = np.argmax(reference)  # row-major first among ties
        assert (y, x) == divmod(int(flat), mask.shape[1])
        assert value == pytest.approx(reference.max(), rel=1e-5)


def test_far_false_positive_blob_does_not_move_positive_point():
    mask = np.zeros((100, 140), dtype=bool)
    mask[20:70, 20:80] = True
    alone = interior_distance(mask, masks_to_xyxy(mask[None])[0]).peak
    with_blob = mask.copy()
    with_blob[85:95, 120:135] = True  # a small false positive far away
    assert interior_distance(with_blob, masks_to_xyxy(with_blob[None])[0]).peak[:2] == alone[:2]
    assert 20 <= alone[0] < 80 and 20 <= alone[1] < 70


def test_negative_point_is_inside_box_and_outside_mask():
    masks = _random_masks(2)
    found = 0
    for mask, box in zip(masks, masks_to_xyxy(masks)):
        point = negative_point(mask, box)
        if point is None:
            continue
        found += 1
        x, y = point
        x1, y1, x2, y2 = box
        assert x1 <= x < x2 and y1 <= y < y2
        assert not mask[y, x]
        # It is the farthest background pixel of the region (first among ties).
        distance = distance_transform_edt(~mask)[y1:y2, x1:x2]
        assert distance[y - y1, x - x1] == pytest.approx(distance.max(), rel=1e-5)
    assert found > 5


def test_negative_point_absent_without_background():
    full = np.zeros((20, 20), dtype=bool)
    full[5:15, 5:15] = True
    assert negative_point(full, masks_to_xyxy(full[None])[0]) is None
    coords, labels = point_prompts(full[None], masks_to_xyxy(full[None]), [interior_distance(full, masks_to_xyxy(full[None])[0])], True)
    assert labels.tolist() == [[1, -1]]


def _embedding_with_similar_context(similar_side):
    """A 2-channel 16x16 embedding of a 256x256 image (16-pixel cells): the object and one context strip
    point along +channel 0, everything else nearly opposite, so bilinear blending does not smear
    similarity past the half-way point between cells."""
    features = torch.zeros(1, 2, 16, 16)
    features[0, 0] = -1.0
    features[0, 1] = 0.2
    features[0, :, 4:12, 4:12] = torch.tensor([1.0, 0.0])[:, None, None]
    if similar_side == "right":
        features[0, :, 4:12, 12:16] = torch.tensor([1.0, 0.0])[:, None, None]
    if similar_side == "top":
        features[0, :, 0:4, 4:12] = torch.tensor([1.0, 0.0])[:, None, None]
    mask = np.zeros((256, 256), dtype=bool)
    mask[64:192, 64:192] = True
    return features, mask


@pytest.mark.parametrize("side, index", [("right", 2), ("top", 1)])
def test_elastic_box_grows_only_where_context_is_similar(side, index):
    features, mask = _embedding_with_similar_context(side)
    similarity = EmbeddingSimilarity(features, (256, 256))
    tight = masks_to_xyxy(mask[None])
    similar = similarity.similar_near(mask[None], tight)
    # As in the authors' code the right and bottom strips start at the box's own last column/row, so
    # 1 of their 10 lines is object: λ = 0.15 keeps those sides from growing on that alone.
    grown, expanded = elastic_boxes(tight, similar, 0.15, (256, 256))
    assert expanded.tolist() == [True]
    changed = np.flatnonzero(grown[0] != tight[0]).tolist()
    assert changed == [index]
    step = int(min(0.1 * (191 - 64), 10))
    expected = tight[0].copy()
    expected[index] += step if index >= 2 else -step
    assert grown[0].tolist() == expected.tolist()
    # λ = 1 is never exceeded: no side moves.
    assert not elastic_boxes(tight, similar, 1.0, (256, 256))[1].any()


def test_similarity_matches_explicit_resize_and_normalise():
    rng = torch.Generator().manual_seed(0)
    features = torch.randn(1, 8, 16, 16, generator=rng)
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:30, 20:50] = True
    similarity = EmbeddingSimilarity(features, (48, 64))
    window = similarity.similar_near(mask[None], masks_to_xyxy(mask[None]), reach=10)[0]
    assert window.origin == (10, 0)
    ours = torch.from_numpy(window.values)
    # The authors' way: resize the valid area to the image, normalise per pixel, compare with the query.
    valid = features[:, :, :12, :16]
    resized = torch.nn.functional.interpolate(valid, (48, 64), mode="bilinear", align_corners=False)[0]
    resized = resized / resized.norm(dim=0, keepdim=True)
    small = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), (12, 16), mode="nearest")[0, 0]
    query = (valid[0] * small).sum(dim=(1, 2)) / small.sum()
    query = query / query.norm()
    reference = (torch.einsum("c,chw->hw", query, resized) > 0.5)[0:40, 10:60]
    assert (ours != reference).float().mean() < 1e-3


def _authors_extract_mask(mask, gauss, input_size, image_size, mask_size, strength):
    """The authors' extract_mask for one mask, on full-size tensors (reference)."""
    F = torch.nn.functional
    signed = torch.from_numpy(mask)[None, None].float() * 2 - 1
    g = torch.from_numpy(gauss)[None, None]
    pad = (0, image_size - input_size[1], 0, image_size - input_size[0])
    signed = F.interpolate(F.pad(F.interpolate(signed, input_size, mode="bilinear", align_corners=False), pad, value=-1.0), mask_size, mode="bilinear", align_corners=False)
    g = F.interpolate(F.pad(F.interpolate(g, input_size, mode="bilinear", align_corners=False), pad, value=0.0), mask_size, mode="bilinear", align_corners=False)
    signed[signed <= 0] = -strength
    signed[signed > 0] = strength
    g[g <= 0] = 1
    return (signed * g)[0, 0]


@pytest.mark.parametrize("shape, input_size, image_size, mask_size", [((64, 64), (64, 64), 64, (64, 64)), ((90, 120), (192, 256), 256, (64, 64)), ((480, 640), (768, 1024), 1024, (256, 256))])
def test_gaussian_prompt_peaks_at_positive_point_and_is_minus_omega_outside(shape, input_size, image_size, mask_size):
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    mask[height // 8 : height * 7 // 8, width // 5 : width * 3 // 5] = True
    box = masks_to_xyxy(mask[None])[0]
    depth = interior_distance(mask, box)
    weights = gaussian_weights(depth, int(mask.sum()), 4.0)
    x, y, _ = depth.peak
    assert weights[y - depth.origin[1], x - depth.origin[0]] == pytest.approx(1.0)
    assert weights.max() == pytest.approx(1.0)
    crop = mask[box[1] : box[3] + 1, box[0] : box[2] + 1]
    assert (weights[~crop] == 0).all()
    frame = to_mask_input(shape, input_size, image_size, mask_size)
    prompt = dense_mask_prompt([crop], [weights], box[None], np.array([30.0]), frame)[0, 0]
    # Equal to the authors' full-size computation.
    full_weights = np.zeros(shape, np.float32)
    full_weights[box[1] : box[3] + 1, box[0] : box[2] + 1] = weights
    reference = _authors_extract_mask(mask, full_weights, input_size, image_size, mask_size, 30.0)
    torch.testing.assert_close(prompt, reference, rtol=1e-4, atol=1e-4)
    prompt = prompt.numpy()
    assert prompt.max() == pytest.approx(30.0, rel=1e-2)
    peak_y, peak_x = np.unravel_index(np.argmax(prompt), prompt.shape)
    scale_y, scale_x = input_size[0] / height * mask_size[0] / image_size, input_size[1] / width * mask_size[1] / image_size
    assert abs(peak_x - x * scale_x) <= 2 and abs(peak_y - y * scale_y) <= 2
    assert (prompt >= -30.0).all() and (prompt[:, -2:] == -30.0).all() and (prompt[-2:, :] == -30.0).all()


def test_spatial_gaussian_peaks_at_positive_point():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 10:30] = True
    depth = interior_distance(mask, masks_to_xyxy(mask[None])[0])
    weights = gaussian_weights(depth, int(mask.sum()), 4.0, kind="spatial")
    x, y, _ = depth.peak
    assert weights[y - depth.origin[1], x - depth.origin[0]] == pytest.approx(1.0)
    assert weights.max() == pytest.approx(1.0)


def test_split_then_merge_follows_the_rule():
    mask = np.zeros((60, 100), dtype=bool)
    # One object cut in two by a thin occluder: the union is box-like, so the halves merge.
    mask[10:30, 10:24] = True
    mask[10:30, 26:40] = True
    # A distant object: merging it would make a mostly empty box, so it stays apart.
    mask[45:55, 80:95] = True
    # A speck under 5 pixels is dropped.
    mask[2:4, 60:62] = True
    regions = split_then_merge(mask)
    assert len(regions) == 2
    assert regions[0].sum() == 20 * 28 and regions[0][10:30, 10:24].all() and regions[0][10:30, 26:40].all()
    assert regions[1].sum() == 150
    assert not any(r[2:4, 60:62].any() for r in regions)


def test_should_merge_rule_on_numbers():
    # Two 10x10 squares side by side with a 1-pixel gap: boxes fill the merged box.
    assert should_merge((0, 0, 9, 9), 100, 100, (11, 0, 20, 9), 100, 100)
    # Far apart diagonally: boxes cover a small part of the merged box.
    assert not should_merge((0, 0, 9, 9), 100, 100, (90, 90, 99, 99), 100, 100)


def test_euclidean_distance_is_bit_identical_to_scipy_and_repeatable():
    from refine_hooks.prompts.points import euclidean_distance

    rng = np.random.default_rng(3)
    solid = np.ones((700, 900), dtype=bool)
    solid[0, 0] = False  # distances up to ~1140: past OpenCV's exact range, so the SciPy path runs too
    speckled = [rng.random(shape) > 0.02 for shape in [(64, 80), (300, 17), (480, 640)]]  # many ties
    for mask in speckled + [solid[:480, :640], solid]:
        reference = distance_transform_edt(mask)
        for _ in range(5):
            np.testing.assert_array_equal(euclidean_distance(mask), reference)
