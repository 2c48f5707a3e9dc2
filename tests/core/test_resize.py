import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refine_hooks.resize import apply_to_box, bilinear_matrix, from_low_res, positive_window, to_mask_input
from refine_hooks.sam import SamEngine


@pytest.mark.parametrize("in_size, out_size", [(7, 7), (10, 4), (4, 10), (480, 1024), (1024, 256), (3, 1)])
def test_bilinear_matrix_equals_interpolate(in_size, out_size):
    x = torch.randn(in_size, dtype=torch.float64)
    expected = F.interpolate(x[None, None, None], (1, out_size), mode="bilinear", align_corners=False)[0, 0, 0]
    torch.testing.assert_close(bilinear_matrix(in_size, out_size) @ x, expected)


def test_mask_input_chain_on_a_box_equals_full_size_chain():
    shape, input_size, image_size, mask_size = (90, 120), (192, 256), 256, (64, 64)
    rng = np.random.RandomState(0)
    full = torch.full(shape, -1.0)
    box = (30, 20, 70, 55)
    inside = torch.from_numpy(rng.rand(36, 41).astype(np.float32))
    full[20:56, 30:71] = inside
    pad = (0, image_size - input_size[1], 0, image_size - input_size[0])
    expected = F.interpolate(F.pad(F.interpolate(full[None, None], input_size, mode="bilinear", align_corners=False), pad, value=-1.0), mask_size, mode="bilinear", align_corners=False)[0, 0]
    rows, cols = to_mask_input(shape, input_size, image_size, mask_size)
    torch.testing.assert_close(apply_to_box(rows, cols, inside, box, constant=-1.0), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(90, 120), (37, 300), (256, 256)])
def test_positive_window_equals_thresholded_postprocess(shape):
    input_size = (round(shape[0] * 256 / max(shape)), round(shape[1] * 256 / max(shape)))
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 64, generator=generator) - 2.0
    logits[10:20, 5:30] += 4.0
    full = F.interpolate(logits[None, None], (256, 256), mode="bilinear", align_corners=False)[..., : input_size[0], : input_size[1]]
    full = F.interpolate(full, shape, mode="bilinear", align_corners=False)[0, 0]
    rows, cols = from_low_res(shape, input_size, 256, (64, 64))
    window, (x0, y0) = positive_window(rows, cols, logits)
    ours = torch.zeros(shape, dtype=torch.bool)
    ours[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    clear = full.abs() > 1e-4  # rounding may differ only where the logit is ~0
    assert torch.equal(ours[clear], (full > 0)[clear])
    assert positive_window(rows, cols, torch.full((64, 64), -1.0)) == (None, None)


def test_engine_upsample_masks_equals_upsample_logits(tiny_sam, scene):
    image, _ = scene
    engine = SamEngine(tiny_sam)
    embedding = engine.encode([image])[0]
    logits = torch.randn(5, 64, 64, generator=torch.Generator().manual_seed(2))
    full = engine.upsample_logits(logits, embedding)
    masks = engine.upsample_masks(logits, embedding)
    clear = (full.abs() > 1e-4).numpy()
    np.testing.assert_array_equal(masks[clear], (full > 0).numpy()[clear])
