"""Prompt mining and postprocessing were made faster (issue 13) without changing what they compute: the
prompts and masks of the current code must equal, bit for bit, those of the code before, kept below as
the reference (it uses only the library's unchanged data classes: ``AxisMap``, ``EmbeddingSimilarity``'s
fields). One intermediate changed on purpose: the elastic box's per-pixel embedding norm is now computed
in float64 from Gram products (``resize.mapped_norm``, closer to the exact norm) instead of norming a
float32 resize; the reference keeps the previous norm (:func:`previous_similarity`), so the prompts and
masks below are compared with the previous computation from end to end.

Shapes: the benchmark's ellipses, large irregular blobs like a random-weight SAM's outputs (boxes as large
as the image), border-touching, thin, tiny and hollow masks; every prompt option; and whole cascades with
a tiny SAM.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from refine_hooks.data.masks import masks_to_xyxy

SIMILARITY_THRESHOLD = 0.5
STRIP_FRACTION = 0.1
STRIP_MAX_PIXELS = 10


# ---------------------------------------------------------------- points (prompts/points.py)
def euclidean_distance(nonzero: np.ndarray) -> np.ndarray:
    approx = cv2.distanceTransform(nonzero.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if approx.size and approx.max() >= 1000.0:
        return distance_transform_edt(nonzero)
    return np.sqrt(np.rint(approx.astype(np.float64) ** 2))


def interior_distance(mask: np.ndarray, box) -> Tuple[np.ndarray, Tuple[int, int]]:
    """(float64 values on the box crop, origin)."""
    height, width = mask.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_x1, pad_y1 = min(x1, 1), min(y1, 1)
    pad_x2, pad_y2 = min(width - 1 - x2, 1), min(height - 1 - y2, 1)
    crop = np.zeros((y2 - y1 + 1 + pad_y1 + pad_y2, x2 - x1 + 1 + pad_x1 + pad_x2), dtype=np.uint8)
    crop[pad_y1 : pad_y1 + y2 - y1 + 1, pad_x1 : pad_x1 + x2 - x1 + 1] = mask[y1 : y2 + 1, x1 : x2 + 1]
    distance = euclidean_distance(crop)
    values = distance[pad_y1 : pad_y1 + y2 - y1 + 1, pad_x1 : pad_x1 + x2 - x1 + 1]
    return np.ascontiguousarray(values), (x1, y1)


def peak(values: np.ndarray, origin) -> Tuple[int, int, float]:
    flat = int(np.argmax(values))
    y, x = divmod(flat, values.shape[1])
    return origin[0] + x, origin[1] + y, float(values[y, x])


def negative_point(mask: np.ndarray, box) -> Optional[Tuple[int, int]]:
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    distance = euclidean_distance(~mask[y1 : y2 + 1, x1 : x2 + 1])[:-1, :-1]
    flat = int(np.argmax(distance))
    y, x = divmod(flat, distance.shape[1])
    if distance[y, x] <= 0:
        return None
    return x1 + x, y1 + y


def point_prompts(masks, boxes, depths, add_negative):
    count = masks.shape[0]
    num_points = 2 if add_negative else 1
    coords = np.zeros((count, num_points, 2), dtype=np.float32)
    labels = np.ones((count, num_points), dtype=np.int64)
    for i in range(count):
        x, y, _ = peak(*depths[i])
        coords[i, 0] = (x, y)
        if add_negative:
            negative = negative_point(masks[i], boxes[i])
            if negative is None:
                labels[i, 1] = -1
            else:
                coords[i, 1] = negative
                labels[i, 1] = 0
    return coords, labels


# ---------------------------------------------------------------- mask prompt (prompts/masks.py)
def gaussian_weights(depth, area: int, gamma: float, kind: str = "distance") -> np.ndarray:
    values, origin = depth
    inside = values > 0
    if kind == "distance":
        spread = max(area / gamma, 1.0)
        weights = np.exp(-((values - values.max()) ** 2) / spread)
    else:
        peak_x, peak_y, _ = peak(values, origin)
        ys, xs = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
        squared = (xs + origin[0] - peak_x) ** 2 + (ys + origin[1] - peak_y) ** 2
        weights = np.exp(-squared / (area * gamma))
    return np.where(inside, weights, 0.0).astype(np.float32)


def axis_apply(axis, x: torch.Tensor, dim: int, start: int, outputs: slice = slice(None)) -> torch.Tensor:
    index = axis.index[outputs] - start
    weight = axis.weight[outputs] * ((index >= 0) & (index < x.shape[dim]))
    index = index.clamp(0, x.shape[dim] - 1)
    shape = [1] * x.dim()
    shape[dim] = index.shape[0]
    out = None
    for k in range(index.shape[1]):
        term = x.index_select(dim, index[:, k]) * weight[:, k].view(shape)
        out = term if out is None else out.add_(term)
    return out


def apply_to_box(rows, cols, values: torch.Tensor, box, constant: float = 0.0) -> torch.Tensor:
    x1, y1 = int(box[0]), int(box[1])
    shifted = values.float() - constant
    out = axis_apply(cols, axis_apply(rows, shifted, 0, y1), 1, x1)
    return out + constant if constant else out


def dense_mask_prompt(masks, weights, boxes, amplitude, frame) -> torch.Tensor:
    rows, cols = frame
    device = rows.weight.device
    prompts = torch.empty((len(masks), 1, rows.size[0], cols.size[0]), device=device)
    for i, (mask, weight, box) in enumerate(zip(masks, weights, boxes)):
        signed = apply_to_box(rows, cols, torch.from_numpy(mask).to(device).float() * 2 - 1, box, constant=-1.0)
        prompts[i, 0] = torch.where(signed > 0, float(amplitude[i]), -float(amplitude[i]))
        if weight is not None:
            gauss = apply_to_box(rows, cols, torch.from_numpy(weight).to(device), box)
            prompts[i, 0] *= torch.where(gauss > 0, gauss, 1.0)
    return prompts


# ---------------------------------------------------------------- elastic box (prompts/boxes.py)
def similarity_norm(valid_features: torch.Tensor, original_size, max_floats: int = 1 << 25) -> torch.Tensor:
    """The previous ``EmbeddingSimilarity.norm``: per-pixel norm of the float32 resize of the valid embedding."""
    height, width = original_size
    squared = torch.zeros(original_size, dtype=torch.float32, device=valid_features.device)
    channel_chunk = max(1, max_floats // (height * width))
    for start in range(0, valid_features.shape[0], channel_chunk):
        part = valid_features[None, start : start + channel_chunk]
        squared += F.interpolate(part, original_size, mode="bilinear", align_corners=False)[0].pow(2).sum(0)
    return squared.sqrt()


def previous_similarity(similarity):
    """A copy of an ``EmbeddingSimilarity`` holding the previous code's norm (None stays None)."""
    if similarity is None:
        return None
    previous = copy.copy(similarity)
    previous.norm = similarity_norm(similarity.valid_features, similarity.original_size)
    return previous


def similar_near(similarity, masks, boxes, reach: int = STRIP_MAX_PIXELS):
    """[(bool window, (x0, y0))] per mask."""
    height, width = similarity.original_size
    windows = []
    for query, (x1, y1, x2, y2) in zip(similarity.query(masks), boxes.astype(np.int64)):
        top, bottom = max(0, y1 - reach), min(height - 1, y2 + reach)
        left, right = max(0, x1 - reach), min(width - 1, x2 + reach)
        projected = torch.einsum("c,chw->hw", query, similarity.valid_features)
        numerator = axis_apply(similarity.rows, projected, 0, 0, slice(top, bottom + 1))
        numerator = axis_apply(similarity.cols, numerator, 1, 0, slice(left, right + 1))
        similar = numerator > SIMILARITY_THRESHOLD * similarity.norm[top : bottom + 1, left : right + 1]
        windows.append((similar.cpu().numpy(), (left, top)))
    return windows


def elastic_boxes(boxes, similar, margin, image_size):
    height, width = image_size
    grown = boxes.astype(np.int64).copy()
    expanded = np.zeros(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        box_w, box_h = x2 - x1, y2 - y1
        if box_w <= 0 or box_h <= 0:
            continue
        step_w = min(box_w * STRIP_FRACTION, STRIP_MAX_PIXELS)
        step_h = min(box_h * STRIP_FRACTION, STRIP_MAX_PIXELS)
        new_x1, new_x2 = int(x1 - step_w), int(x2 + step_w)
        new_y1, new_y2 = int(y1 - step_h), int(y2 + step_h)
        strips = (
            (0, new_x1, 0 < new_x1 < x1, (y1, y2, new_x1, x1)),
            (2, new_x2, x2 < new_x2 < width, (y1, y2, x2, new_x2)),
            (1, new_y1, 0 < new_y1 < y1, (new_y1, y1, x1, x2)),
            (3, new_y2, y2 < new_y2 < height, (y2, new_y2, x1, x2)),
        )
        values, (x0, y0) = similar[i]
        for side, value, inside, (y_from, y_to, x_from, x_to) in strips:
            if not inside:
                continue
            region = values[y_from - y0 : y_to - y0, x_from - x0 : x_to - x0]
            if region.size and region.sum() / region.size > margin:
                grown[i, side] = value
                expanded[i] = True
    return grown, expanded


# ---------------------------------------------------------------- SAMRefiner._prompts
def prompts(refiner, embedding, masks, similarity, margin) -> Dict[str, torch.Tensor]:
    """What ``SAMRefiner._prompts`` returned, for a refiner with ``distance="exact"``."""
    tight = masks_to_xyxy(masks)
    depths = [interior_distance(mask, box) for mask, box in zip(masks, tight)]
    result: Dict[str, torch.Tensor] = {}
    if refiner.use_point:
        coords, labels = point_prompts(masks, tight, depths, refiner.add_negative)
        result["point_coords"] = torch.from_numpy(coords)
        result["point_labels"] = torch.from_numpy(labels)
    expanded = np.zeros(len(masks), dtype=bool)
    if refiner.use_box:
        boxes = tight
        if similarity is not None:
            boxes, expanded = elastic_boxes(tight, similar_near(similarity, masks, tight), margin, embedding.original_size)
        result["boxes"] = torch.from_numpy(boxes.astype(np.float32))
    if refiner.use_mask:
        crops = [mask[y1 : y2 + 1, x1 : x2 + 1] for mask, (x1, y1, x2, y2) in zip(masks, tight)]
        if refiner.gaussian == "binary":
            weights: List[Optional[np.ndarray]] = [None] * len(crops)
        else:
            weights = [gaussian_weights(d, int(c.sum()), refiner.gamma, refiner.gaussian) for d, c in zip(depths, crops)]
        amplitude = np.where(expanded, 1.0, refiner.strength)
        result["mask_inputs"] = dense_mask_prompt(crops, weights, tight, amplitude, refiner.engine.mask_input_frame(embedding))
    return result


# ---------------------------------------------------------------- postprocess (resize.py, sam/engine.py)
def positive_window(rows, cols, logits: torch.Tensor):
    positive = logits > 0
    if not bool(positive.any()):
        return None, None
    ys = torch.nonzero(positive.any(dim=1)).flatten()
    xs = torch.nonzero(positive.any(dim=0)).flatten()
    r1, r2 = rows.outputs_touching(int(ys[0]), int(ys[-1]))
    c1, c2 = cols.outputs_touching(int(xs[0]), int(xs[-1]))
    i1, i2 = rows.inputs_of(r1, r2)
    j1, j2 = cols.inputs_of(c1, c2)
    window = axis_apply(rows, logits[i1 : i2 + 1, j1 : j2 + 1], 0, i1, slice(r1, r2 + 1))
    window = axis_apply(cols, window, 1, j1, slice(c1, c2 + 1))
    return window > 0, (c1, r1)


def upsample_masks(engine, low_res_logits: torch.Tensor, embedding) -> np.ndarray:
    rows, cols = engine.low_res_frame(embedding)
    masks = np.zeros((low_res_logits.shape[0],) + tuple(embedding.original_size), dtype=bool)
    for i, logits in enumerate(low_res_logits):
        window, origin = positive_window(rows, cols, logits.float())
        if window is not None:
            x0, y0 = origin
            masks[i, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window.cpu().numpy()
    return masks



# ---------------------------------------------------------------- SAMRefiner._cascade
def cascade(refiner, embedding, coarse, similarity, margin, keep_logits=False):
    """``SAMRefiner._cascade`` as it was: whole-image masks compared and copied every iteration."""
    current = coarse.copy()
    ious = np.full(len(coarse), np.nan, dtype=np.float32)
    empty_first = np.zeros(len(coarse), dtype=bool)
    last_logits = None
    active = np.arange(len(coarse))
    for iteration in range(refiner.iterations):
        result = prompts(refiner, embedding, current[active], similarity, margin)
        logits, candidate_ious = refiner.engine.decode(embedding, multimask_output=refiner.multimask_output, **result)
        best = candidate_ious.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        selected = logits[rows, best]
        binary = upsample_masks(refiner.engine, selected, embedding)
        best_ious = candidate_ious[rows, best].cpu().numpy()
        nonempty = binary.reshape(len(binary), -1).any(axis=1)
        changed = (binary != current[active]).reshape(len(binary), -1).any(axis=1)
        current[active[nonempty]] = binary[nonempty]
        ious[active[nonempty]] = best_ious[nonempty]
        if keep_logits:
            if last_logits is None:
                last_logits = selected.new_zeros((len(coarse),) + tuple(selected.shape[1:]))
            last_logits[torch.from_numpy(active[nonempty]).to(selected.device)] = selected[torch.from_numpy(nonempty).to(selected.device)]
        if iteration == 0:
            empty_first[active[~nonempty]] = True
        active = active[nonempty & changed]
        if active.size == 0:
            break
    return current, ious, empty_first, last_logits

# ================================================================ tests
import pytest  # noqa: E402

from refine_hooks.benchmarks.refiner import generate_scene  # noqa: E402
from refine_hooks.prompts import EmbeddingSimilarity  # noqa: E402
from refine_hooks.refiners import SAMRefiner  # noqa: E402
from refine_hooks.sam import SamEngine  # noqa: E402


def blobs(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Irregular masks of every size: thresholded smooth noise (most as large as the image, like a
    random-weight SAM's outputs), plus border, thin, tiny and hollow shapes."""
    rng = np.random.RandomState(seed)
    masks = []
    for _ in range(count):
        noise = cv2.GaussianBlur(rng.randn(height, width).astype(np.float32), (0, 0), float(rng.uniform(2, 12)))
        masks.append(noise > np.quantile(noise, rng.uniform(0.2, 0.97)))
    extra = np.zeros((6, height, width), bool)
    extra[0, : height // 3, width // 2 :] = True  # touches two borders
    extra[1, height // 2, 3 : width - 3] = True  # one pixel thin
    extra[2, 5, 7] = True  # one pixel
    cv2.circle(extra[3].view(np.uint8), (width // 2, height // 2), min(height, width) // 3, 1, 2)  # ring
    extra[4] = True  # the whole image
    extra[5, :, :2] = True  # a strip along the left border
    return np.concatenate([np.stack(masks), extra])


@pytest.fixture(scope="module")
def cases(tiny_sam):
    engine = SamEngine(tiny_sam)
    out = []
    for height, width, seed in [(96, 128, 0), (130, 90, 1)]:
        image = np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8)
        _, ellipses = generate_scene(height, width, 12, seed=seed)
        masks = np.concatenate([ellipses[ellipses.reshape(12, -1).any(axis=1)], blobs(14, height, width, seed)])
        out.append((engine, engine.encode([image])[0], masks))
    return out


def assert_same_prompts(new, old):
    assert new.keys() == old.keys()
    for key in old:
        assert new[key].dtype == old[key].dtype and torch.equal(new[key], old[key]), key


@pytest.mark.parametrize("options", [
    dict(),
    dict(gaussian="spatial"),
    dict(gaussian="binary", add_negative=False),
    dict(use_point=False),
    dict(use_mask=False),
    dict(use_box=False),
])
@pytest.mark.parametrize("margin", [0.0, 0.1, 0.02])
def test_prompts_equal_the_previous_implementation(cases, options, margin):
    for engine, embedding, masks in cases:
        refiner = SAMRefiner(engine, **options)
        similarity = EmbeddingSimilarity(embedding.features, embedding.original_size) if margin > 0 else None
        reference = previous_similarity(similarity)
        if similarity is not None:  # the two norms differ by float rounding only
            torch.testing.assert_close(similarity.norm, reference.norm, rtol=2e-5, atol=0)
        new = refiner._prompts(embedding, masks, similarity, margin)
        old = prompts(refiner, embedding, masks, reference, margin)
        assert_same_prompts(new, old)
        if similarity is not None and options.get("use_box", True):  # the strips decide: some boxes grew
            assert (new["boxes"].numpy() != masks_to_xyxy(masks)).any() or margin > 0.05


def test_postprocessed_masks_equal_the_previous_implementation(cases):
    rng = torch.Generator().manual_seed(0)
    for engine, embedding, _ in cases:
        m = engine.mask_input_size[0]
        smooth = torch.nn.functional.avg_pool2d(torch.randn(40, 1, m, m, generator=rng), 9, 1, 4)[:, 0]
        logits = torch.cat([smooth * 10 + torch.linspace(-3, 3, 40)[:, None, None],  # every fill level
                            torch.full((1, m, m), -1.0), torch.full((1, m, m), 2.0)])  # empty and full
        rows, cols = engine.low_res_frame(embedding)
        logits[:, int(rows.last.max()) + 1 :, :] = -5.0  # the previous code raised when only SAM's padding
        logits[:, :, int(cols.last.max()) + 1 :] = -5.0  # was positive (below)
        np.testing.assert_array_equal(engine.upsample_masks(logits, embedding), upsample_masks(engine, logits, embedding))
        # Positive only in SAM's padding (outside the image): an empty mask (the previous code raised).
        padding = torch.full((1, m, m), -1.0)
        height, width = embedding.original_size
        if height < width:
            padding[0, m - 2 :, :] = 5.0
        else:
            padding[0, :, m - 2 :] = 5.0
        assert not engine.upsample_masks(padding, embedding).any()


@pytest.mark.parametrize("options", [dict(), dict(margin=0.05), dict(gaussian="spatial", iterations=2), dict(min_area=30)])
def test_cascades_equal_the_previous_implementation(cases, options):
    for engine, embedding, masks in cases:
        image = np.random.RandomState(0).randint(0, 255, embedding.original_size + (3,), dtype=np.uint8)
        options = dict(options)
        current = SAMRefiner(engine, iterations=options.pop("iterations", 3), **options)
        result = current.refine(image, masks, probabilities=True)
        previous = SAMRefiner(engine, iterations=current.iterations, **options)
        previous._cascade = lambda emb, coarse, sim, margin, keep=False, in_place=False: cascade(previous, emb, coarse, previous_similarity(sim), margin, keep)
        expected = previous.refine(image, masks, probabilities=True)
        np.testing.assert_array_equal(result.masks, expected.masks)
        np.testing.assert_array_equal(result.iou_predictions, expected.iou_predictions)
        assert result.passed_through == expected.passed_through
        for new, old in zip(result.probabilities, expected.probabilities):
            assert (new is None) == (old is None)
            if new is not None:
                assert (new.x0, new.y0) == (old.x0, old.y0) and np.array_equal(new.values, old.values)


def test_masks_replaced_within_their_extents_equal_whole_image_replacement():
    """The cascade's bookkeeping: a mask only ever compared and written inside its extent (the rectangle
    it cannot leave) ends up, and reports changes, exactly as whole-image comparison and copy would."""
    from refine_hooks.refiners.samrefiner import _replace_if_changed

    rng = np.random.RandomState(0)
    height, width = 40, 50
    for _ in range(200):
        mask = np.zeros((height, width), bool)
        mask[rng.randint(0, 20) : rng.randint(21, 40), rng.randint(0, 25) : rng.randint(26, 50)] = True
        extent = masks_to_xyxy(mask[None])[0]
        for _ in range(6):  # windows that move, shrink, grow, repeat the mask, or hold False borders
            if rng.rand() < 0.2:
                ys, xs = np.nonzero(mask)
                y0, x0 = ys.min() - rng.randint(0, 2) * (ys.min() > 0), xs.min()
                window = mask[y0 : ys.max() + 1, x0 : xs.max() + 1].copy()
            else:
                h, w = rng.randint(1, 25), rng.randint(1, 30)
                y0, x0 = rng.randint(0, height - h + 1), rng.randint(0, width - w + 1)
                window = rng.rand(h, w) < rng.choice([0.3, 0.9, 1.0])
            if not window.any():
                continue
            expected = np.zeros_like(mask)
            expected[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
            before = mask.copy()
            changed = _replace_if_changed(mask, extent, window, (x0, y0))
            assert changed == (not np.array_equal(before, expected))
            assert np.array_equal(mask, expected)
            ys, xs = np.nonzero(mask)
            assert extent[0] <= xs.min() and extent[1] <= ys.min() and extent[2] >= xs.max() and extent[3] >= ys.max()
