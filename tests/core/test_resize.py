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


def _dense(axis_map, in_size: int) -> torch.Tensor:
    """float64 ``out x in_size`` matrix of an AxisMap (its float32 weights)."""
    out_size = axis_map.index.shape[0]
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((torch.arange(out_size)[:, None].expand_as(axis_map.index), axis_map.index),
                      axis_map.weight.double(), accumulate=True)
    return matrix


def _exact_norm(values: torch.Tensor, rows, cols) -> torch.Tensor:
    """float64 per-output norm over channels of ``values`` (``C x h x w``) mapped by ``rows`` and ``cols``."""
    return torch.einsum("oh,chw,pw->cop", _dense(rows, values.shape[1]), values.double(), _dense(cols, values.shape[2])).norm(dim=0)


@pytest.mark.parametrize("channels, in_size, out_size", [
    (256, (64, 48), (480, 640)),  # SAM's valid embedding up to an image
    (32, (16, 16), (10, 12)),  # an image smaller than the embedding
    (8, (5, 7), (1, 300)),  # one-pixel rows and columns
    (4, (3, 1), (17, 1)),
])
def test_mapped_norm_equals_the_norm_of_the_mapped_channels(channels, in_size, out_size):
    from refine_hooks.resize import mapped_norm, resize_map

    values = torch.randn(channels, *in_size, generator=torch.Generator().manual_seed(0))
    rows, cols = resize_map(in_size, out_size)
    norm = mapped_norm(values, rows, cols, max_floats=1 << 12)  # several output chunks
    assert norm.dtype == torch.float32 and norm.shape == out_size
    exact = _exact_norm(values, rows, cols)
    # Within float32 output rounding of the exact norm (float64 arithmetic inside); norming the float32
    # F.interpolate result, as before, is off by up to ~1e-5 at these sizes.
    torch.testing.assert_close(norm.double(), exact, rtol=2.5e-7, atol=1e-12)
    plain = F.interpolate(values[None], out_size, mode="bilinear", align_corners=False)[0].pow(2).sum(0).sqrt()
    torch.testing.assert_close(norm, plain, rtol=2e-5, atol=0)


def test_mapped_norm_of_a_composed_chain_with_padding():
    """SAM's mask-input chain (resize, pad, resize): more than two taps per output, zero-weight padding."""
    from refine_hooks.resize import mapped_norm

    rows, cols = to_mask_input((90, 130), (177, 256), 256, (64, 64))
    values = torch.randn(3, 90, 130, generator=torch.Generator().manual_seed(1))
    assert rows.index.shape[1] > 2 or cols.index.shape[1] > 2
    exact = _exact_norm(values, rows, cols)
    torch.testing.assert_close(mapped_norm(values, rows, cols).double(), exact, rtol=2.5e-7, atol=1e-12)
