"""The Phoenix refiner: a trainer's checkpoint runs through every SAMRefiner interface; wrong files stop."""

import numpy as np
import pytest
import torch

from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.refiners import PASS_BELOW_MIN_AREA, PASS_EMPTY, Phoenix, SAMRefiner, build_refiner
from refine_hooks.sam import SamEngine, build_sam_model
from refine_hooks.sam.refiner_weights import (RefinerCheckpointError, load_refiner_weights, read_refiner_checkpoint,
                                              sam_fingerprint)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.RandomState(0)
    image = (rng.rand(90, 120, 3) * 255).astype(np.uint8)
    masks = np.zeros((6, 90, 120), dtype=bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 50:85, 60:115] = True
    masks[1, 60:70, 70:80] = False
    yy, xx = np.mgrid[:90, :120]
    masks[2] = (yy - 45) ** 2 + (xx - 30) ** 2 < 15**2
    masks[3, 0:20, 100:120] = True
    masks[5, 30:33, 80:83] = True
    return image, masks


def phoenix(tiny_sam_file, refiner_file, **kwargs):
    return build_refiner(dict(type="Phoenix", model_type="tiny", checkpoint=tiny_sam_file, refiner_checkpoint=refiner_file, **kwargs))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_together_equals_one_by_one(tiny_sam_file, refiner_file, scene, chunk):
    image, masks = scene
    together = phoenix(tiny_sam_file, refiner_file, decoder_chunk_size=chunk, iterations=3).refine(image, masks)
    single = phoenix(tiny_sam_file, refiner_file, iterations=3)
    alone = [single.refine(image, masks[i : i + 1]) for i in range(len(masks))]
    np.testing.assert_array_equal(together.masks, np.concatenate([r.masks for r in alone]))
    np.testing.assert_allclose(together.iou_predictions, np.concatenate([r.iou_predictions for r in alone]), rtol=1e-5)


def test_pass_through_reasons_and_result_records(tiny_sam_file, refiner_file, scene):
    image, masks = scene
    refiner = phoenix(tiny_sam_file, refiner_file, min_area=20)
    result = refiner.refine(image, masks)
    assert result.passed_through == {4: PASS_EMPTY, 5: PASS_BELOW_MIN_AREA}
    np.testing.assert_array_equal(result.masks[[4, 5]], masks[[4, 5]])
    assert np.isfinite(result.iou_predictions[:4]).all() and np.isnan(result.iou_predictions[4:]).all()
    config = refiner.config
    assert config["type"] == "Phoenix" and config["kind"] == "phoenix" and config["margin"] == 0.0
    assert config["gaussian"] == "binary" and config["strength"] == 30.0 and config["iterations"] == 5
    assert len(config["refiner_checkpoint"]["sha256"]) == 64


def test_phoenix_is_samrefiners_cascade_on_the_trained_weights(tiny_sam_file, refiner_file, scene):
    """Same masks as SAMRefiner run with the checkpoint's weights, tight boxes and its mask encoding."""
    image, masks = scene
    ours = phoenix(tiny_sam_file, refiner_file, iterations=3).refine(image, masks)
    sam = build_sam_model("tiny", tiny_sam_file)
    load_refiner_weights(sam, refiner_file)
    reference = SAMRefiner(SamEngine(sam), iterations=3, margin=0.0, gaussian="binary", strength=30.0).refine(image, masks)
    np.testing.assert_array_equal(ours.masks, reference.masks)
    # and the trained weights matter: SAM's own decoder gives other masks
    plain = SAMRefiner(SamEngine(build_sam_model("tiny", tiny_sam_file)), iterations=3, margin=0.0, gaussian="binary",
                       strength=30.0).refine(image, masks)
    assert not np.array_equal(plain.masks, ours.masks)


def test_prompts_are_the_tight_box_points_and_binary_mask(tiny_sam_file, refiner_file, scene):
    image, masks = scene
    refiner = phoenix(tiny_sam_file, refiner_file)
    embedding = refiner.engine.encode([image])[0]
    prompts = refiner.prompts_for(embedding, masks[:4])
    np.testing.assert_array_equal(prompts["boxes"].numpy(), masks_to_xyxy(masks[:4]).astype(np.float32))
    values = torch.unique(prompts["mask_inputs"])
    assert set(values.tolist()) <= {-30.0, 30.0}


def test_checkpoint_contents(refiner_file, tiny_sam_file):
    state = read_refiner_checkpoint(refiner_file)
    assert state["kind"] == "phoenix"
    assert state["mask_prompt"] == {"encoding": "binary", "strength": 30.0, "gamma": 4.0}
    assert state["prompts"] == {"use_point": True, "use_box": True, "add_negative": True}
    assert {key.split(".")[0] for key in state["weights"]} == {"prompt_encoder", "mask_decoder"}  # no projector
    assert state["training"]["noise"] == "adversarial" and state["training"]["cmrl"]["enabled"] is True
    assert state["sam_fingerprint"] == sam_fingerprint(build_sam_model("tiny", tiny_sam_file))


def test_a_checkpoint_for_another_sam_stops_naming_both_fingerprints(refiner_file, other_sam_file, tiny_sam_file):
    with pytest.raises(RefinerCheckpointError) as error:
        build_refiner(dict(type="Phoenix", model_type="tiny", checkpoint=other_sam_file, refiner_checkpoint=refiner_file))
    message = str(error.value)
    theirs = read_refiner_checkpoint(refiner_file)["sam_fingerprint"][:16]
    mine = sam_fingerprint(build_sam_model("tiny", other_sam_file))[:16]
    assert theirs in message and mine in message and refiner_file in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_ours", "missing", "directory"])
def test_damaged_checkpoints_stop_naming_the_file(tmp_path, refiner_file, tiny_sam_file, damage):
    path = tmp_path / "bad.pth"
    if damage == "truncated":
        path.write_bytes(open(refiner_file, "rb").read()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "not_ours":
        torch.save({"model": {}}, path)
    elif damage == "directory":
        path.mkdir()
    with pytest.raises(RefinerCheckpointError, match=str(path)):
        phoenix(tiny_sam_file, str(path))


def test_options_the_checkpoint_decides_are_refused(tiny_sam_file, refiner_file):
    with pytest.raises(ValueError, match="margin"):
        phoenix(tiny_sam_file, refiner_file, margin=0.1)
    with pytest.raises(ValueError, match="iou_adapter"):
        phoenix(tiny_sam_file, refiner_file, iou_adapter="x.pth")
    with pytest.raises(ValueError, match="refiner_checkpoint"):
        build_refiner(dict(type="Phoenix", model_type="tiny"))
    assert set(Phoenix.hyper_parameters()) == {"iterations", "multimask_output", "task", "min_area", "max_chunk_pixels",
                                               "encoder_batch_size"}


def test_fingerprint_tells_sams_apart(tiny_sam_file, other_sam_file):
    a, b = build_sam_model("tiny", tiny_sam_file), build_sam_model("tiny", other_sam_file)
    assert sam_fingerprint(a) == sam_fingerprint(build_sam_model("tiny", tiny_sam_file))
    assert sam_fingerprint(a) != sam_fingerprint(b)
