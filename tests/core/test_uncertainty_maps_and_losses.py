"""SUM's uncertainty maps (refiner probabilities, soft coarse masks, u = |σ(s) − σ(r)|), their files, and
the uncertainty-aware losses and sampling, checked against direct computations on whole images."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy.ndimage import distance_transform_edt

from refine_hooks.data.windows import WindowedMap, mask_box, union_box
from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine
from refine_hooks.uncertainty import (
    KIND_UNCERTAINTY, MapEntry, MapFile, MapFileError, binary_mask_probability, certainty_from_levels, certainty_summary,
    check_against_annotations, quantize, sample_by_certainty, ua_bce_with_logits, ua_dice_loss, ua_focal_loss,
    uncertainty_map, write_map_file)


def _whole_image_signed_distance(mask, width):
    """σ(s) of a binary mask computed on the whole image (the reference for the windowed version): the
    image border is no boundary, so the image is padded with the mask's own edge before the transforms."""
    padded = np.pad(mask, 1, mode="edge")
    inside = distance_transform_edt(padded)[1:-1, 1:-1]
    outside = distance_transform_edt(~padded)[1:-1, 1:-1]
    signed = np.where(mask, inside - 0.5, 0.5 - outside)
    return 1 / (1 + np.exp(-signed / width))


# ---------------------------------------------------------------------------------------------- σ(s)
@pytest.mark.parametrize("width", [0.5, 2.0])
def test_binary_mask_probability_on_a_window_equals_the_whole_image(scene, width):
    _, masks = scene
    rng = np.random.default_rng(0)
    for mask in masks:
        box = mask_box(mask)
        if box is None:
            continue
        # any window holding the mask: its own box, or larger (up to the image's border)
        x1, y1, x2, y2 = box
        grown = (max(0, x1 - int(rng.integers(0, 6))), max(0, y1 - int(rng.integers(0, 6))),
                 min(mask.shape[1] - 1, x2 + int(rng.integers(0, 6))), min(mask.shape[0] - 1, y2 + int(rng.integers(0, 6))))
        reference = _whole_image_signed_distance(mask, width)
        for window in (box, grown):
            got = binary_mask_probability(mask, window, width)
            wx1, wy1, wx2, wy2 = window
            np.testing.assert_allclose(got, reference[wy1:wy2 + 1, wx1:wx2 + 1], atol=1e-6)


def test_binary_mask_probability_values_at_the_boundary():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    p = binary_mask_probability(mask, (0, 0, 19, 19), width=0.5)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert p[10, 5] == pytest.approx(sigmoid(1.0), abs=1e-6)   # first mask pixel: d = +0.5
    assert p[10, 4] == pytest.approx(sigmoid(-1.0), abs=1e-6)  # first background pixel: d = -0.5
    assert p[10, 6] == pytest.approx(sigmoid(3.0), abs=1e-6)
    assert (p[mask] > 0.5).all() and (p[~mask] < 0.5).all()
    # a mask that fills the whole image has no boundary: certain everywhere
    assert binary_mask_probability(np.ones((8, 9), bool), (0, 0, 8, 7)).min() > 0.999
    with pytest.raises(ValueError, match="positive"):
        binary_mask_probability(mask, (0, 0, 19, 19), width=0)


# ---------------------------------------------------------------------------------------------- σ(r)
def test_refiner_probabilities_are_the_last_selected_logits_in_the_union_box(tiny_sam, scene):
    image, masks = scene
    engine = SamEngine(tiny_sam, device="cpu")
    refiner = SAMRefiner(engine, iterations=3, margin=0.0)
    plain = refiner.refine(image, masks)
    result = refiner.refine(image, masks, probabilities=True)
    assert plain.probabilities is None
    np.testing.assert_array_equal(result.masks, plain.masks)  # asking for probabilities changes nothing
    np.testing.assert_array_equal(result.iou_predictions, plain.iou_predictions)

    # the reference: the masks after 2 iterations, re-prompted and decoded once more on the whole image
    two = SAMRefiner(engine, iterations=2, margin=0.0).refine(image, masks)
    embedding = engine.encode([image])[0]
    compared = 0
    for i in range(len(masks)):
        soft = result.probabilities[i]
        if i in result.passed_through:
            assert soft is None
            continue
        assert soft.box == union_box(mask_box(masks[i]), mask_box(result.masks[i]))
        x1, y1, x2, y2 = soft.box
        assert soft.values.dtype == np.float32
        # σ(r) > 0.5 is exactly the refined mask, which has no pixel outside the window
        np.testing.assert_array_equal(soft.values > 0.5, result.masks[i, y1:y2 + 1, x1:x2 + 1])
        assert result.masks[i].sum() == result.masks[i, y1:y2 + 1, x1:x2 + 1].sum()
        logits, ious = engine.decode(embedding, **refiner._prompts(embedding, two.masks[i:i + 1], None, 0.0))
        best = int(ious[0].argmax())
        full = torch.sigmoid(engine.upsample_logits(logits[:, best], embedding))[0].numpy()
        if np.array_equal(full > 0.5, result.masks[i]) and (full > 0.5).any():  # not an empty third output
            np.testing.assert_allclose(soft.values, full[y1:y2 + 1, x1:x2 + 1], atol=2e-5)
            compared += 1
    assert compared >= 3


def test_probabilities_for_groups_of_an_encoded_image(tiny_sam, scene):
    image, masks = scene
    refiner = SAMRefiner(SamEngine(tiny_sam, device="cpu"), iterations=2)
    whole = refiner.refine(image, masks, probabilities=True)
    embedding = refiner.engine.encode([image])[0]
    part = refiner.refine_with_embedding(embedding, masks[1:3], refiner.margin, probabilities=True)
    for j, i in enumerate((1, 2)):
        assert part.probabilities[j].box == whole.probabilities[i].box
        np.testing.assert_array_equal(part.probabilities[j].values, whole.probabilities[i].values)


# ---------------------------------------------------------------------------------------------- u
def test_uncertainty_map_equals_the_whole_image_formula(scene):
    _, masks = scene
    coarse, refined = masks[0], np.zeros_like(masks[0])
    refined[15:45, 20:60] = True  # overlaps the coarse mask and sticks out of its box
    rng = np.random.default_rng(1)
    sigma_r = rng.random(coarse.shape).astype(np.float32)
    box = union_box(mask_box(coarse), mask_box(refined))
    x1, y1, x2, y2 = box
    soft = WindowedMap(sigma_r[y1:y2 + 1, x1:x2 + 1], x1, y1)
    u = uncertainty_map(coarse, refined, soft, width=0.5)
    reference = np.abs(_whole_image_signed_distance(coarse, 0.5) - sigma_r)
    assert u.box == box
    np.testing.assert_allclose(u.full(*coarse.shape)[y1:y2 + 1, x1:x2 + 1], reference[y1:y2 + 1, x1:x2 + 1], atol=1e-6)
    assert not u.full(*coarse.shape)[:, :x1].any()  # 0 outside the union of the boxes

    # a detector's soft mask stands for σ(s) where there is one (uint8 levels or floats), 0 outside its window
    detector = np.zeros(coarse.shape, np.float32)
    detector[5:50, 5:55] = rng.random((45, 50))
    levels = WindowedMap(quantize(detector[5:50, 5:55]), 5, 5)
    with_detector = uncertainty_map(coarse, refined, soft, levels)
    expected = np.abs(quantize(detector).astype(np.float32) / 255 - sigma_r)
    np.testing.assert_allclose(with_detector.values, expected[y1:y2 + 1, x1:x2 + 1], atol=1e-6)
    with pytest.raises(ValueError, match="cover"):
        uncertainty_map(coarse, refined, WindowedMap(soft.values[1:], x1, y1 + 1))


def test_quantised_summary():
    coarse = np.zeros((10, 10), bool)
    coarse[2:6, 2:6] = True
    refined = np.zeros((10, 10), bool)
    refined[3:7, 3:7] = True
    u = np.zeros((10, 10), np.float32)
    u[3:5, 3:7] = 0.9  # 8 uncertain refined pixels
    u[2, 2] = 0.2
    x1, y1, x2, y2 = union_box(mask_box(coarse), mask_box(refined))
    levels = WindowedMap(quantize(u[y1:y2 + 1, x1:x2 + 1]), x1, y1)
    summary = certainty_summary(levels, coarse, refined, theta=0.6)
    c = certainty_from_levels(quantize(u))
    assert summary["certain_fraction"] == pytest.approx(8 / 16)
    assert summary["mean_certainty"] == pytest.approx(round(float(c[coarse | refined].mean()), 4))
    assert np.abs(certainty_from_levels(quantize(u)) - (1 - u)).max() <= 1 / 510 + 1e-7


# ---------------------------------------------------------------------------------------------- files
def _entries(rng, count=5, size=(40, 50)):
    entries, truth = [], {}
    for key in range(100, 100 + count):
        x0, y0 = int(rng.integers(0, 20)), int(rng.integers(0, 20))
        values = rng.integers(0, 256, size=(int(rng.integers(1, 20)), int(rng.integers(1, 30))), dtype=np.uint8)
        truth[key] = WindowedMap(values, x0, y0)
        entries.append(MapEntry.from_levels(key, size[0], size[1], truth[key]))
    return entries, truth


def test_map_file_round_trips_and_is_deterministic(tmp_path):
    entries, truth = _entries(np.random.default_rng(0))
    path, again = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    write_map_file(path, entries, kind=KIND_UNCERTAINTY, meta={"note": "x"})
    write_map_file(again, entries, kind=KIND_UNCERTAINTY, meta={"note": "x"})
    assert open(path, "rb").read() == open(again, "rb").read()
    maps = MapFile(path, kind=KIND_UNCERTAINTY)
    assert maps.header["note"] == "x" and len(maps) == 5 and maps.key_kind == "id"
    assert maps.keys().tolist() == list(truth)
    for key, expected in truth.items():
        got = maps.levels(key)
        assert got.box == expected.box and maps.image_size(key) == (40, 50)
        np.testing.assert_array_equal(got.values, expected.values)
        np.testing.assert_array_equal(got.full(40, 50), expected.full(40, 50))
    assert 100 in maps and 99 not in maps
    with pytest.raises(KeyError, match="no map for id 99"):
        maps.levels(99)
    with pytest.raises(MapFileError, match="coarse_probability"):
        MapFile(path, kind="coarse_probability")
    with pytest.raises(ValueError, match="inside"):
        MapEntry.from_levels(1, 10, 10, WindowedMap(np.zeros((5, 5), np.uint8), 8, 0))


def test_map_file_corruption_is_named(tmp_path):
    entries, _ = _entries(np.random.default_rng(0))
    path = str(tmp_path / "a.bin")
    write_map_file(path, entries, kind=KIND_UNCERTAINTY)
    data = open(path, "rb").read()
    (tmp_path / "short.bin").write_bytes(data[:-10])
    with pytest.raises(MapFileError, match="truncated"):
        MapFile(str(tmp_path / "short.bin"))
    (tmp_path / "json.bin").write_bytes(b'{"annotations": []}')
    with pytest.raises(MapFileError, match="magic"):
        MapFile(str(tmp_path / "json.bin"))
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        MapFile(str(tmp_path / "nothing.bin"))


def test_check_against_annotations_names_the_mismatch(tmp_path):
    entries, _ = _entries(np.random.default_rng(0), count=2)
    path = str(tmp_path / "a.bin")
    write_map_file(path, entries, kind=KIND_UNCERTAINTY)
    maps = MapFile(path)
    rle = {"size": [40, 50], "counts": "x"}
    records = [{"id": 100, "image_id": 1, "segmentation": rle, "refinement": {"status": "refined"}},
               {"id": 101, "image_id": 1, "segmentation": rle, "refinement": {"status": "refined"}},
               {"id": 102, "image_id": 1, "segmentation": rle, "refinement": {"status": "passed_through"}}]
    check_against_annotations(maps, records, {1: (40, 50)}, "ann.json")  # fits
    with pytest.raises(MapFileError, match=r"ann\.json does not have \(first: 101\).*another annotation file"):
        check_against_annotations(maps, records[:1], {1: (40, 50)}, "ann.json")
    extra = records + [{"id": 7, "image_id": 1, "segmentation": rle, "refinement": {"status": "refined"}}]
    with pytest.raises(MapFileError, match="1 refined records of ann.json have no map.*annotation ids 7"):
        check_against_annotations(maps, extra, {1: (40, 50)}, "ann.json")
    resized = [dict(r, segmentation={"size": [80, 100], "counts": "x"}) for r in records]
    with pytest.raises(MapFileError, match="annotation id 100.*40x50 image, the record's mask is 80x100"):
        check_against_annotations(maps, resized, {1: (80, 100)}, "ann.json")


# ---------------------------------------------------------------------------------------------- losses
def _inputs(shape=(3, 17, 19), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 3
    targets = (torch.rand(shape, generator=generator) > 0.5).float()
    certainty = torch.rand(shape, generator=generator)
    return logits, targets, certainty


def test_certainty_one_gives_the_plain_losses_exactly():
    logits, targets, _ = _inputs()
    ones = torch.ones_like(logits)
    assert torch.equal(ua_focal_loss(logits, targets, ones), torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="mean"))
    assert torch.equal(ua_focal_loss(logits, targets, ones, alpha=-1, gamma=2),
                       torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2, reduction="mean"))
    assert torch.equal(ua_bce_with_logits(logits, targets, ones), F.binary_cross_entropy_with_logits(logits, targets))
    # Dice (SAM / SAM-HQ / Mask2Former form, ε = 1), written out
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    plain_dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    assert torch.equal(ua_dice_loss(logits, targets, ones), plain_dice)
    assert torch.equal(ua_dice_loss(logits, targets, None), plain_dice)


@pytest.mark.parametrize("loss", ["focal", "bce", "dice"])
def test_pixels_with_certainty_zero_contribute_nothing(loss):
    logits, targets, certainty = _inputs()
    certainty[:, :5] = 0.0  # these pixels are uncertain
    certainty[:, 5:] = certainty[:, 5:].clamp(min=0.7)  # the others certain (above θ for Dice)
    function = {"focal": ua_focal_loss, "bce": ua_bce_with_logits, "dice": ua_dice_loss}[loss]
    changed_logits = logits.clone()
    changed_logits[:, :5] = torch.randn_like(changed_logits[:, :5]) * 10
    changed_targets = targets.clone()
    changed_targets[:, :5] = 1 - changed_targets[:, :5]
    value = function(logits, targets, certainty)
    assert torch.allclose(value, function(changed_logits, changed_targets, certainty), atol=0, rtol=1e-6)
    leaf = logits.clone().requires_grad_()
    function(leaf, targets, certainty).sum().backward()
    assert torch.count_nonzero(leaf.grad[:, :5]) == 0
    assert torch.count_nonzero(leaf.grad[:, 5:]) > 0


def test_weighted_losses_follow_sum_equations():
    logits, targets, certainty = _inputs()
    focal = torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="none")
    assert torch.allclose(ua_focal_loss(logits, targets, certainty), (certainty * focal).mean())  # eq. 1
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(ua_bce_with_logits(logits, targets, certainty), (certainty * bce).mean())
    assert torch.allclose(ua_bce_with_logits(logits, targets, certainty, reduction="per_mask"), (certainty * bce).flatten(1).mean(1))
    keep = (certainty > 0.6).float().flatten(1)  # eq. 2
    p, t = logits.sigmoid().flatten(1), targets.flatten(1)
    expected = 1 - (2 * (t * p * keep).sum(1) + 1) / (((t + p) * keep).sum(1) + 1)
    assert torch.allclose(ua_dice_loss(logits, targets, certainty, theta=0.6), expected)
    with pytest.raises(ValueError, match="shape"):
        ua_focal_loss(logits, targets, certainty[:, :3])


def test_sampling_distribution_matches_certainty():
    generator = torch.Generator().manual_seed(0)
    certainty = torch.rand(6, 7, generator=generator)
    region = torch.rand(6, 7, generator=generator) > 0.3
    certainty[0, 0], region[0, 0] = 0.0, True  # c = 0: never drawn
    draws = 400_000
    points = sample_by_certainty(certainty, region, draws, generator)
    assert points.shape == (draws, 2)
    counts = torch.zeros(6, 7)
    counts.index_put_((points[:, 1], points[:, 0]), torch.ones(draws), accumulate=True)
    expected = certainty * region / (certainty * region).sum()
    assert counts[~region].sum() == 0 and counts[0, 0] == 0
    frequency = counts / draws
    # every pixel's frequency within 5 binomial standard deviations of c_i / Σ c
    std = torch.sqrt(expected * (1 - expected) / draws)
    assert ((frequency - expected).abs() <= 5 * std + 1e-9).all()
    # a region without any certainty is sampled uniformly
    uniform = sample_by_certainty(torch.zeros(4, 4), region[:4, :4], 1000, generator)
    assert region[:4, :4][uniform[:, 1], uniform[:, 0]].all()
    with pytest.raises(ValueError, match="empty region"):
        sample_by_certainty(certainty, torch.zeros(6, 7, dtype=torch.bool), 1)


def test_resampled_levels_keep_constant_maps_exact():
    from refine_hooks.uncertainty import certainty_from_resampled_levels

    levels = torch.full((1, 1, 20, 30), 255.0)
    levels[..., 15:] = 0.0
    aligned = torchvision.ops.roi_align(levels, [torch.tensor([[0.3, 1.7, 14.2, 18.9], [15.1, 0.2, 29.0, 19.5]])], 7, 1.0, 0, True)
    certainty = certainty_from_resampled_levels(aligned)
    assert torch.equal(certainty[0], torch.zeros_like(certainty[0])) and torch.equal(certainty[1], torch.ones_like(certainty[1]))
    mixed = certainty_from_resampled_levels(torch.tensor([0.0, 100.0, 255.0, 300.0, -4.0]))
    assert torch.allclose(mixed, torch.tensor([1.0, 1 - 100 / 255, 0.0, 0.0, 1.0]), atol=1 / 65536)
