"""``precision`` covers SAM's mask decoder: its transformer and upscaling run in bf16/fp16, the rest in fp32."""

import numpy as np
import pytest
import torch

from refine_hooks.benchmarks import refiner as benchmark
from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine, build_tiny_sam


def _prompts(mask_size):
    rng = torch.Generator().manual_seed(0)
    return dict(point_coords=torch.tensor([[[10.0, 12.0], [30.0, 20.0]], [[40.0, 5.0], [0.0, 0.0]]]),
                point_labels=torch.tensor([[1, 0], [1, -1]]),
                boxes=torch.tensor([[5.0, 6.0, 40.0, 30.0], [20.0, 2.0, 60.0, 40.0]]),
                mask_inputs=torch.randn(2, 1, *mask_size, generator=rng) * 30)


def _dtypes_seen(module):
    """Record the dtypes of the float tensors ``module``'s submodules receive."""
    seen = set()
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.update(a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()))
               for m in module.modules()]
    return seen, handles


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_transformer_and_upscaling_run_low_precision_the_rest_float32(tiny_sam, precision, dtype):
    engine = SamEngine(tiny_sam, precision=precision)
    embedding = engine.encode([np.zeros((48, 64, 3), np.uint8)])[0]
    decoder = tiny_sam.mask_decoder
    watched = {name: _dtypes_seen(getattr(decoder, name)) for name in
               ("iou_prediction_head", "output_hypernetworks_mlps")}
    logits, ious = engine.decode(embedding, **_prompts(engine.mask_input_size))
    copies = engine._low_precision_modules(("transformer", "output_upscaling"), dtype)
    assert all(p.dtype == dtype for m in copies for p in m.parameters())
    for name, (seen, handles) in watched.items():
        assert seen == {torch.float32}, name
        for handle in handles:
            handle.remove()
    assert logits.dtype == torch.float32 and ious.dtype == torch.float32
    # The model itself is left as it was: float32 weights, its own forwards.
    assert all(p.dtype == torch.float32 for p in decoder.parameters())
    assert "forward" not in vars(decoder.transformer) and "forward" not in vars(decoder.output_upscaling)


def test_low_precision_decoding_stays_close_to_float32_and_repeats_exactly(tiny_sam):
    fp32, bf16 = SamEngine(tiny_sam), SamEngine(tiny_sam, precision="bf16")
    embedding = fp32.encode([np.random.RandomState(0).randint(0, 255, (48, 64, 3), dtype=np.uint8)])[0]
    prompts = _prompts(fp32.mask_input_size)
    reference, reference_ious = fp32.decode(embedding, **prompts)
    low, low_ious = bf16.decode(embedding, **prompts)
    assert not torch.equal(low, reference)  # it did run in bf16
    # bf16 keeps 8 bits of mantissa: relative errors of a few 1e-3 per operation.
    assert (low - reference).abs().mean() < 0.05 * reference.abs().mean()
    torch.testing.assert_close(low_ious, reference_ious, rtol=0.05, atol=0.02)
    again, again_ious = bf16.decode(embedding, **prompts)
    assert torch.equal(again, low) and torch.equal(again_ious, low_ious)


def test_low_precision_copies_follow_the_weights(tmp_path):
    model = build_tiny_sam(seed=1)
    engine = SamEngine(model, precision="bf16")
    embedding = engine.encode([np.zeros((48, 64, 3), np.uint8)])[0]
    prompts = _prompts(engine.mask_input_size)
    before = engine.decode(embedding, **prompts)[0]
    with torch.no_grad():
        for p in model.mask_decoder.transformer.parameters():
            p.mul_(0.5)
    after = engine.decode(embedding, **prompts)[0]
    assert not torch.equal(before, after)
    fresh = SamEngine(model, precision="bf16").decode(embedding, **prompts)[0]
    assert torch.equal(after, fresh)


def test_gradients_reach_the_model_through_low_precision_decoding(tiny_sam):
    engine = SamEngine(tiny_sam, precision="bf16")
    embedding = engine.encode([np.zeros((48, 64, 3), np.uint8)])[0]
    head = tiny_sam.mask_decoder.iou_prediction_head.layers[-1].weight
    first = tiny_sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image.q_proj.weight
    head.grad = first.grad = None
    logits, ious = engine.decode_boxes_with_grad(embedding, torch.tensor([[5.0, 6.0, 40.0, 30.0]]))
    (ious.sum() + logits.mean()).backward()
    assert head.grad is not None and first.grad is not None and first.grad.abs().sum() > 0
    head.grad = first.grad = None


def test_refiner_with_bf16_decoder_refines(tiny_sam, scene):
    image, masks = scene
    result = SAMRefiner(SamEngine(tiny_sam, precision="bf16"), iterations=2).refine(image, masks)
    assert result.masks.shape == masks.shape and np.isfinite(result.iou_predictions[:4]).all()


def test_benchmark_prints_precisions_side_by_side(capsys):
    parser = __import__("argparse").ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--model-type", "tiny", "--image-size", "60x80", "--masks", "3", "--iterations", "2",
                              "--precision", "bf16", "fp32"])
    assert benchmark.run_from_args(args) == 0
    lines = [__import__("json").loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["precision"] for line in lines] == ["fp32", "bf16"]  # fp32 first: the reference
    assert "identical_to_fp32" not in lines[0]
    assert 0 <= lines[1]["identical_to_fp32"] <= 1 and 0 <= lines[1]["mean_iou_to_fp32"] <= 1


def test_agreement_counts_identical_masks_and_iou():
    reference = np.zeros((3, 4, 4), bool)
    reference[0, :2] = True
    reference[1, :, :2] = True
    masks = reference.copy()
    masks[1, 0, 2] = True  # 9 vs 8 pixels: IoU 8/9
    result = benchmark.agreement(masks, reference)  # the third pair: both empty, identical, IoU 1
    assert result["identical_to_fp32"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["mean_iou_to_fp32"] == pytest.approx((1 + 8 / 9 + 1) / 3, abs=1e-6)


def test_hq_sam_decoder_runs_in_low_precision_too(scene):
    from refine_hooks.sam import build_random_sam

    image, masks = scene
    engine = SamEngine(build_random_sam("tiny_hq"), precision="bf16")
    result = SAMRefiner(engine, iterations=2).refine(image, masks[:4])
    assert np.isfinite(result.iou_predictions).all()
    assert all(p.dtype == torch.bfloat16 for m in engine._low_precision_modules(("transformer", "output_upscaling"), torch.bfloat16)
               for p in m.parameters())


@pytest.mark.parametrize("model_type", ["tiny", "tiny_hq", "vit_b"])
def test_float32_decoding_equals_the_plain_decoder_call_bit_for_bit(model_type):
    """The engine's layout change (channels-last image tokens) and its cached positional encoding change no
    value: fp32 results equal SAM's own modules called the plain way."""
    from refine_hooks.sam import build_random_sam

    model = build_random_sam(model_type)
    engine = SamEngine(model)
    image = np.random.RandomState(0).randint(0, 255, (48, 64, 3), dtype=np.uint8)
    embedding = engine.encode([image])[0]
    prompts = _prompts(engine.mask_input_size)
    logits, ious = engine.decode(embedding, **prompts)
    with torch.no_grad():
        for i in range(2):
            coords = engine.scale_coords(prompts["point_coords"][i : i + 1], embedding)
            box = engine.scale_coords(prompts["boxes"][i : i + 1].reshape(-1, 2, 2), embedding).reshape(-1, 4)
            sparse, dense = model.prompt_encoder(points=(coords, prompts["point_labels"][i : i + 1]), boxes=box,
                                                 masks=prompts["mask_inputs"][i : i + 1])
            kwargs = dict(image_embeddings=embedding.features, image_pe=model.prompt_encoder.get_dense_pe(),
                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
            if engine.is_hq:
                kwargs.update(hq_token_only=False, interm_embeddings=embedding.interm_features)
            plain_logits, plain_ious = model.mask_decoder(**kwargs)
            assert torch.equal(logits[i : i + 1], plain_logits) and torch.equal(ious[i : i + 1], plain_ious)
