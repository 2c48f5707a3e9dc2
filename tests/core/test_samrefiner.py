import numpy as np
import pytest
import torch

from refine_hooks.prompts import EmbeddingSimilarity
from refine_hooks.refiners import PASS_BELOW_MIN_AREA, PASS_EMPTY, SAMRefiner, build_refiner
from refine_hooks.sam import SamEngine, build_tiny_sam


def _refiner(tiny_sam, chunk=64, **kwargs):
    return SAMRefiner(SamEngine(tiny_sam, decoder_chunk_size=chunk), **kwargs)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_refining_together_equals_one_by_one(tiny_sam, scene, chunk):
    image, masks = scene
    together = _refiner(tiny_sam, chunk=chunk, iterations=3).refine(image, masks)
    one_by_one = [_refiner(tiny_sam, iterations=3).refine(image, masks[i : i + 1]) for i in range(len(masks))]
    np.testing.assert_array_equal(together.masks, np.concatenate([r.masks for r in one_by_one]))
    np.testing.assert_allclose(together.iou_predictions, np.concatenate([r.iou_predictions for r in one_by_one]), rtol=1e-5)


def test_repeated_calls_give_identical_masks(tiny_sam):
    """Same inputs, same process, other allocations in between: bit-identical results (the prompts
    tie-break on exact distances; decoding is batch invariant on CPU)."""
    rng = np.random.default_rng(0)
    image = (rng.random((72, 96, 3)) * 60).astype(np.uint8)
    yy, xx = np.mgrid[:72, :96]
    masks = np.stack([(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) & (rng.random((72, 96)) > 0.05)
                      for cy, cx, ry, rx in [(30, 40, 15, 20), (50, 60, 10, 25), (20, 70, 12, 12)]])
    refiner = _refiner(tiny_sam, iterations=5)
    first = refiner.refine(image, masks)
    for size in (1000, 3333, 77777):
        _ = [np.empty(size) for _ in range(10)]
        again = refiner.refine(image, masks)
        np.testing.assert_array_equal(again.masks, first.masks)
        np.testing.assert_array_equal(again.iou_predictions, first.iou_predictions)
    alone = np.concatenate([refiner.refine(image, masks[i : i + 1]).masks for i in range(3)])
    np.testing.assert_array_equal(alone, first.masks)


def test_refine_batch_equals_refine_per_image(tiny_sam, scene):
    image, masks = scene
    flipped = np.ascontiguousarray(image[:, ::-1])
    refiner = _refiner(tiny_sam, iterations=2, encoder_batch_size=2)
    batch = refiner.refine_batch([image, flipped], [masks, masks[:, :, ::-1]])
    single = _refiner(tiny_sam, iterations=2).refine(flipped, np.ascontiguousarray(masks[:, :, ::-1]))
    np.testing.assert_array_equal(batch[1].masks, single.masks)


def test_empty_and_tiny_masks_pass_through(tiny_sam, scene):
    image, masks = scene
    result = _refiner(tiny_sam, min_area=20).refine(image, masks)
    assert result.passed_through == {4: PASS_EMPTY, 5: PASS_BELOW_MIN_AREA}
    np.testing.assert_array_equal(result.masks[4], masks[4])
    np.testing.assert_array_equal(result.masks[5], masks[5])
    assert np.isnan(result.iou_predictions[[4, 5]]).all()
    assert np.isfinite(result.iou_predictions[:4]).all()
    assert result.refined.tolist() == [True, True, True, True, False, False]
    assert result.masks.dtype == bool and result.masks.shape == masks.shape


def test_no_masks(tiny_sam, scene):
    image, _ = scene
    result = _refiner(tiny_sam).refine(image, np.zeros((0,) + image.shape[:2], dtype=bool))
    assert result.masks.shape == (0,) + image.shape[:2] and result.iou_predictions.shape == (0,)


@pytest.mark.parametrize(
    "image, masks, message",
    [
        (np.zeros((10, 10, 3), np.float32), np.zeros((1, 10, 10), bool), "uint8"),
        (np.zeros((10, 10), np.uint8), np.zeros((1, 10, 10), bool), "H x W x 3"),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((1, 10, 10), np.uint8), "bool"),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool), "N x H x W"),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((1, 12, 10), bool), "12x10 but the image is 10x10"),
    ],
)
def test_wrong_inputs_say_what_was_expected(tiny_sam, image, masks, message):
    with pytest.raises(ValueError, match=message):
        _refiner(tiny_sam).refine(image, masks)


@pytest.mark.parametrize(
    "switches",
    [dict(use_point=False), dict(use_box=False), dict(use_mask=False), dict(add_negative=False), dict(margin=0.0),
     dict(multimask_output=False), dict(gaussian="spatial")],
)
def test_each_prompt_switch_runs(tiny_sam, scene, switches):
    image, masks = scene
    result = _refiner(tiny_sam, iterations=2, **switches).refine(image, masks)
    assert result.masks.shape == masks.shape


def test_cascade_changes_with_iterations_and_is_deterministic(tiny_sam, scene):
    image, masks = scene
    one = _refiner(tiny_sam, iterations=1).refine(image, masks)
    again = _refiner(tiny_sam, iterations=1).refine(image, masks)
    np.testing.assert_array_equal(one.masks, again.masks)
    with pytest.raises(ValueError, match="iterations"):
        _refiner(tiny_sam, iterations=0)
    with pytest.raises(ValueError, match="at least one"):
        _refiner(tiny_sam, use_point=False, use_box=False, use_mask=False)


def test_refine_semantic_returns_one_mask_per_class(tiny_sam, scene):
    image, _ = scene
    semantic = np.zeros((3,) + image.shape[:2], dtype=bool)
    semantic[0, 10:30, 10:30] = True
    semantic[0, 50:80, 70:110] = True  # second object of class 0, far away: its own region
    semantic[2, 1:3, 1:3] = True  # only a speck: nothing to refine
    result = _refiner(tiny_sam, iterations=2).refine_semantic(image, semantic)
    assert result.masks.shape == semantic.shape
    assert result.passed_through == {1: PASS_EMPTY, 2: PASS_BELOW_MIN_AREA}
    assert np.isfinite(result.iou_predictions[0])


def test_build_refiner_from_config(tmp_path):
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", iterations=2, margin=0.0))
    assert isinstance(refiner, SAMRefiner) and refiner.iterations == 2
    assert refiner.config["margin"] == 0.0
    with pytest.raises(KeyError, match="available"):
        build_refiner(dict(type="Nope"))


def test_converged_masks_stop_iterating_with_the_same_result(scene):
    """A mask whose output equals its input stops iterating; results equal running every iteration.

    With the prompt encoder's weights and positional encoding zeroed, SAM ignores the prompts: every mask maps to the same mask
    F, and F maps to itself, so masks converge after a couple of iterations.
    """
    image, masks = scene
    sam = build_tiny_sam(seed=0)
    with torch.no_grad():
        for tensor in list(sam.prompt_encoder.parameters()) + list(sam.prompt_encoder.buffers()):
            tensor.zero_()
    refiner = SAMRefiner(SamEngine(sam), iterations=5)
    decoded = []
    original_decode = refiner.engine.decode
    refiner.engine.decode = lambda *a, **k: decoded.append(len(k["boxes"])) or original_decode(*a, **k)
    early = refiner.refine(image, masks)
    # 5 non-empty masks; all converge within a few iterations (a mask's prompt tokens still depend on
    # whether it has a negative point, so a group may take one iteration more).
    assert decoded[0] == 5 and len(decoded) < 5
    # Reference: every iteration on every mask, no convergence shortcut.
    embedding = refiner.engine.encode([image])[0]
    similarity = EmbeddingSimilarity(embedding.features, embedding.original_size)
    todo = [0, 1, 2, 3, 5]
    current = masks[todo].copy()
    for _ in range(5):
        prompts = refiner._prompts(embedding, current, similarity, refiner.margin)
        logits, ious = original_decode(embedding, **prompts)
        best = ious.argmax(dim=1)
        binary = refiner.engine.upsample_masks(logits[range(len(best)), best], embedding)
        assert binary.any()
        current = binary
    np.testing.assert_array_equal(early.masks[todo], current)
    assert early.passed_through == {4: PASS_EMPTY}
