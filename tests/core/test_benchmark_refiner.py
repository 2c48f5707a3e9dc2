"""The refiner benchmark's work accounting: FLOPs counted on meta tensors equal FLOPs of real passes."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from refine_hooks.benchmarks import refiner as benchmark
from refine_hooks.sam import SamEngine, build_random_sam


@pytest.mark.parametrize("model_type", ["tiny", "tiny_hq"])
def test_gflop_on_meta_copy_equals_real_passes(model_type):
    model = build_random_sam(model_type)
    engine = SamEngine(model, device="cpu")
    image = torch.zeros(64, 80, 3, dtype=torch.uint8).numpy()
    with FlopCounterMode(display=False) as counter:
        embedding = engine.encode([image])[0]
    real_encoder = counter.get_total_flops()
    mask_size = engine.mask_input_size
    with FlopCounterMode(display=False) as counter:
        engine.decode(embedding, point_coords=torch.tensor([[[10.0, 20.0], [30.0, 5.0]]]),
                      point_labels=torch.tensor([[1, 0]]), boxes=torch.tensor([[2.0, 3.0, 40.0, 50.0]]),
                      mask_inputs=torch.zeros(1, 1, *mask_size))
    real_decoder = counter.get_total_flops()

    counted = benchmark.pass_gflop(model)

    assert real_encoder > 0 and real_decoder > 0
    # The engine's encode also normalises and pads the image (elementwise work FlopCounterMode does not
    # count), so both sides count only the network's matrix work.
    assert counted["encoder_gflop"] == pytest.approx(real_encoder / 1e9, rel=1e-9)
    assert counted["decoder_pass_gflop"] == pytest.approx(real_decoder / 1e9, rel=1e-9)


def test_benchmark_counts_one_decoder_pass_per_mask_and_iteration():
    one = benchmark.run("tiny", 60, 80, 3, iterations=1)
    assert one["decoder_passes"] == 3
    assert one["decoder_gflop_total"] == pytest.approx(3 * one["decoder_pass_gflop"], abs=0.01)
    cascade = benchmark.run("tiny", 60, 80, 3, iterations=3)
    # Masks whose output equals their input stop iterating, so a cascade decodes at most masks x iterations.
    assert 3 <= cascade["decoder_passes"] <= 9
    for key in ("encode_s", "mine_s", "decode_s", "postprocess_s", "outside_encoder_s", "peak_memory_mb"):
        assert cascade[key] >= 0
