import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything_hq")
from segment_anything_hq import SamPredictor as HQSamPredictor  # noqa: E402
from segment_anything_hq.utils.transforms import ResizeLongestSide  # noqa: E402

from refine_hooks.refiners import SAMRefiner  # noqa: E402
from refine_hooks.sam import SamEngine, TinySamConfig, build_sam_model, build_tiny_sam, save_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_hq():
    return build_tiny_sam(TinySamConfig(hq=True), seed=0)


def test_hq_decoder_matches_hq_predictor(tiny_hq, scene):
    image, _ = scene
    engine = SamEngine(tiny_hq, decoder_chunk_size=2)
    assert engine.is_hq
    embedding = engine.encode([image])[0]
    coords = torch.tensor([[[20.0, 30.0]], [[90.0, 70.0]], [[40.0, 40.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 50.0, 110.0, 85.0], [20.0, 20.0, 60.0, 60.0]])
    logits, ious = engine.decode(embedding, point_coords=coords, point_labels=labels, boxes=boxes)

    predictor = HQSamPredictor(tiny_hq)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, embedding.input_size, mode="bilinear", align_corners=False, antialias=True)
    predictor.set_torch_image(resized, image.shape[:2])
    transform = ResizeLongestSide(engine.image_size)
    _, ref_ious, ref_logits = predictor.predict_torch(
        transform.apply_coords_torch(coords, image.shape[:2]), labels, transform.apply_boxes_torch(boxes, image.shape[:2]),
        multimask_output=True,
    )
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ious, ref_ious, rtol=1e-4, atol=1e-4)


def test_hq_refiner_batched_equals_one_by_one(tiny_hq, scene):
    image, masks = scene
    refiner = SAMRefiner(SamEngine(tiny_hq, decoder_chunk_size=2), iterations=2)
    together = refiner.refine(image, masks)
    alone = [SAMRefiner(SamEngine(tiny_hq), iterations=2).refine(image, masks[i : i + 1]).masks for i in range(len(masks))]
    np.testing.assert_array_equal(together.masks, np.concatenate(alone))


def test_hq_checkpoint_round_trip(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny_hq.pth", TinySamConfig(hq=True), seed=1)
    loaded = build_sam_model("sam_hq_vit_b", path)
    assert hasattr(loaded.mask_decoder, "hf_token")
