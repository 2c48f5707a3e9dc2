"""``distance="raster"``: the authors' FastGeodis raster scan (generalised_geodesic2d, lamb 0, 2 iterations).

Checked three ways: against FastGeodis itself where it is installed (``pip install --no-build-isolation
--no-deps FastGeodis==1.0.5``, a source build against the installed torch), against a straightforward
per-pixel implementation of the same scan written here, and by properties of any chamfer distance.
The prompts SAMRefiner builds from it (points, Gaussian mask prompt) must equal the prompts built from
the reference maps the way the authors' ``extract_points`` picks them.
"""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.prompts import dense_mask_prompt, gaussian_weights, interior_distance, raster_distance
from refine_hooks.prompts.points import InteriorDistance, raster_negative_points
from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine

FRAME = (40, 56)


def reference_raster(nonseed: np.ndarray, iterations: int = 2) -> np.ndarray:
    """The scan, pixel by pixel: zeros are seeds (0), the rest start at 1e10; each iteration sweeps rows
    down, rows up, columns right, columns left, every pixel taking min(itself, neighbour in the previous
    line + 1 or float32 sqrt(2)), all in float32."""
    height, width = nonseed.shape
    d = np.where(nonseed, np.float32(1e10), np.float32(0)).astype(np.float32)
    diagonal = np.float32(np.sqrt(np.float32(2.0)))
    costs = {-1: diagonal, 0: np.float32(1.0), 1: diagonal}

    def sweep(lines, length, get, put):
        for line in lines:
            previous_line = line - 1 if lines.start < lines.stop else line + 1
            new = [get(line, i) for i in range(length)]
            for i in range(length):
                for offset, cost in costs.items():
                    j = i + offset
                    if 0 <= j < length:
                        new[i] = min(new[i], np.float32(get(previous_line, j) + cost))
            for i in range(length):
                put(line, i, new[i])

    def row_get(h, w):
        return d[h, w]

    def row_put(h, w, v):
        d[h, w] = v

    def col_get(w, h):
        return d[h, w]

    def col_put(w, h, v):
        d[h, w] = v

    for _ in range(iterations):
        sweep(range(1, height), width, row_get, row_put)
        sweep(range(height - 2, -1, -1), width, row_get, row_put)
        sweep(range(1, width), height, col_get, col_put)
        sweep(range(width - 2, -1, -1), height, col_get, col_put)
    return d


def shapes():
    """bool masks of FRAME: rings, ellipses, border-touching, thin, tiny and multi-component shapes."""
    height, width = FRAME
    out = {}

    def draw(fn):
        canvas = np.zeros(FRAME, np.uint8)
        fn(canvas)
        return canvas.astype(bool)

    out["ring"] = draw(lambda c: cv2.circle(c, (28, 20), 14, 1, 4))
    out["thin ring"] = draw(lambda c: cv2.circle(c, (25, 18), 11, 1, 1))
    out["ellipse"] = draw(lambda c: cv2.ellipse(c, (27, 19), (20, 9), 30, 0, 360, 1, -1))
    out["ellipse at border"] = draw(lambda c: cv2.ellipse(c, (6, 35), (14, 8), 0, 0, 360, 1, -1))
    out["corner block"] = draw(lambda c: c.__setitem__((slice(0, 15), slice(40, 56)), 1))
    out["thin diagonal"] = draw(lambda c: cv2.line(c, (3, 3), (50, 36), 1, 1))
    out["thin vertical"] = draw(lambda c: cv2.line(c, (30, 2), (30, 37), 1, 1))
    out["one pixel"] = draw(lambda c: c.__setitem__((17, 23), 1))
    out["two by two"] = draw(lambda c: c.__setitem__((slice(5, 7), slice(9, 11)), 1))
    out["blob and far speck"] = draw(lambda c: (cv2.circle(c, (15, 15), 9, 1, -1), c.__setitem__((35, 50), 1)))
    out["three components"] = draw(lambda c: (cv2.circle(c, (10, 28), 6, 1, -1), cv2.rectangle(c, (30, 3), (52, 12), 1, -1),
                                              cv2.ellipse(c, (40, 30), (9, 5), 60, 0, 360, 1, -1)))
    out["C shape"] = draw(lambda c: cv2.ellipse(c, (28, 20), (16, 14), 0, 40, 320, 1, 5))
    out["whole frame"] = np.ones(FRAME, bool)
    return out


SHAPES = shapes()


@pytest.mark.parametrize("name", list(SHAPES))
def test_raster_distance_equals_the_straightforward_scan(name):
    mask = SHAPES[name]
    for nonseed in (mask, ~mask):
        np.testing.assert_array_equal(raster_distance(nonseed), reference_raster(nonseed))


def test_raster_distance_of_odd_sizes_and_batches():
    rng = np.random.RandomState(0)
    for shape in [(1, 1), (1, 9), (9, 1), (2, 3), (7, 5)]:
        nonseed = rng.rand(*shape) > 0.3
        np.testing.assert_array_equal(raster_distance(nonseed), reference_raster(nonseed))
    batch = rng.rand(4, 12, 15) > 0.1
    together = raster_distance(batch)
    for one, alone in zip(together, batch):
        np.testing.assert_array_equal(one, raster_distance(alone))
    assert raster_distance(np.zeros((3, 4), bool)).max() == 0
    assert (raster_distance(np.ones((3, 4), bool)) == np.float32(1e10)).all()  # no seed: unreached


def test_raster_distance_is_a_chamfer_distance():
    """At least the Euclidean distance (a path of unit and diagonal steps is never shorter), equal to it
    along straight lines (a rectangle's pixels are nearest to the background straight across), and
    no more than 8% above it on a disc (the 1/sqrt(2) chamfer's known bound)."""
    rng = np.random.RandomState(1)
    for _ in range(20):
        nonseed = rng.rand(30, 40) > rng.choice([0.02, 0.1, 0.5])
        exact = distance_transform_edt(nonseed)
        assert (raster_distance(nonseed) >= exact - 1e-4).all()
    rectangle = np.zeros((20, 30), bool)
    rectangle[3:17, 2:25] = True
    np.testing.assert_array_equal(raster_distance(rectangle), distance_transform_edt(rectangle).astype(np.float32))
    disc = np.zeros((61, 61), bool)
    disc[30, 30] = True
    exact = distance_transform_edt(~disc)
    ratio = raster_distance(~disc)[exact > 0] / exact[exact > 0]
    assert ratio.max() <= 1.0824 + 1e-5 and ratio.max() > 1.01


@pytest.mark.parametrize("name", list(SHAPES))
def test_interior_distance_on_the_box_equals_the_whole_image_scan(name):
    mask = SHAPES[name]
    box = masks_to_xyxy(mask[None])[0]
    depth = interior_distance(mask, box, "raster")
    x1, y1, x2, y2 = box
    np.testing.assert_array_equal(depth.values, raster_distance(mask)[y1 : y2 + 1, x1 : x2 + 1].astype(np.float64))


def test_unknown_distance_is_refused(tiny_sam):
    with pytest.raises(ValueError, match="distance must be one of"):
        SAMRefiner(SamEngine(tiny_sam), distance="geodesic")
    assert SAMRefiner(SamEngine(tiny_sam)).distance == "exact"  # the default stays exact
    assert SAMRefiner(SamEngine(tiny_sam), distance="raster").config["distance"] == "raster"


# ------------------------------------------------------------------ prompts, as the authors pick them
def authors_points(mask: np.ndarray, distance_map) -> tuple:
    """``extract_points``' positive and negative points from whole-image maps: the first maximum in row-major
    order; the negative's map is zeroed outside ``[ymin:ymax, xmin:xmax]``. We give no negative point where
    the authors' would be at a zero distance (their origin point): None."""
    positive_map = distance_map(mask)
    y, x = divmod(int(np.argmax(positive_map)), mask.shape[1])
    negative_map = distance_map(~mask).copy()
    ys, xs = np.nonzero(mask)
    region = np.zeros_like(mask)
    region[ys.min() : ys.max(), xs.min() : xs.max()] = True
    negative_map[~region] = 0
    ny, nx = divmod(int(np.argmax(negative_map)), mask.shape[1])
    negative = (nx, ny) if negative_map[ny, nx] > 0 else None
    return (x, y), negative, positive_map


def authors_mask_prompt(mask, positive_map, gamma, strength, engine, embedding):
    """The authors' Gaussian and ``extract_mask`` on whole-image float32 tensors (torch)."""
    F = torch.nn.functional
    dt = torch.from_numpy(positive_map)
    area = max(torch.from_numpy(mask).sum() / gamma, 1)
    shifted = dt - dt.max()
    gauss = torch.exp(-shifted * shifted / area)
    gauss[dt == 0] = 0
    signed = torch.from_numpy(mask).float() * 2 - 1
    size, (new_h, new_w) = engine.image_size, embedding.input_size
    pad = (0, size - new_w, 0, size - new_h)

    def chain(x, value):
        x = F.interpolate(x[None, None], (new_h, new_w), mode="bilinear", align_corners=False)
        return F.interpolate(F.pad(x, pad, value=value), engine.mask_input_size, mode="bilinear", align_corners=False)[0, 0]

    signed, gauss = chain(signed, -1.0), chain(gauss, 0.0)
    signed = torch.where(signed > 0, float(strength), -float(strength))
    return signed * torch.where(gauss > 0, gauss, 1.0)


def check_prompts_against(distance_map, tiny_sam):
    engine = SamEngine(tiny_sam)
    image = np.random.RandomState(0).randint(0, 255, FRAME + (3,), dtype=np.uint8)
    embedding = engine.encode([image])[0]
    refiner = SAMRefiner(engine, distance="raster")
    names = [n for n in SHAPES if n != "whole frame"]
    masks = np.stack([SHAPES[n] for n in names])
    prompts = refiner.prompts_for(embedding, masks)
    boxes = masks_to_xyxy(masks)
    for i, name in enumerate(names):
        positive, negative, positive_map = authors_points(masks[i], distance_map)
        assert tuple(prompts["point_coords"][i, 0].tolist()) == positive, name
        if negative is None:
            assert prompts["point_labels"][i, 1] == -1, name
        else:
            assert prompts["point_labels"][i, 1] == 0 and tuple(prompts["point_coords"][i, 1].tolist()) == negative, name
        # The mask prompt from the reference map through our pipeline: the same values, bit for bit ...
        x1, y1, x2, y2 = boxes[i]
        depth = InteriorDistance(positive_map[y1 : y2 + 1, x1 : x2 + 1].astype(np.float64), (int(x1), int(y1)))
        crop = masks[i, y1 : y2 + 1, x1 : x2 + 1]
        weights = gaussian_weights(depth, int(crop.sum()), refiner.gamma)
        ours = dense_mask_prompt([crop], [weights], boxes[i : i + 1], np.array([refiner.strength]), engine.mask_input_frame(embedding))
        torch.testing.assert_close(prompts["mask_inputs"][i : i + 1], ours, rtol=0, atol=0)
        # ... and the authors' float32 whole-image computation up to float rounding of the resizes.
        theirs = authors_mask_prompt(masks[i], positive_map, refiner.gamma, refiner.strength, engine, embedding)
        torch.testing.assert_close(prompts["mask_inputs"][i, 0], theirs, rtol=0, atol=2e-4)


def test_prompts_follow_the_straightforward_scan(tiny_sam):
    check_prompts_against(reference_raster, tiny_sam)


def test_prompts_and_distances_equal_fastgeodis(tiny_sam):
    FastGeodis = pytest.importorskip("FastGeodis")

    def fastgeodis_map(nonseed):
        ones = torch.ones((1, 1) + nonseed.shape)
        seeds = torch.from_numpy(nonseed.astype(np.uint8))[None, None]
        return FastGeodis.generalised_geodesic2d(ones, seeds, 1e10, 0.0, 2)[0, 0].numpy()

    for name, mask in SHAPES.items():
        for nonseed in (mask, ~mask):
            np.testing.assert_array_equal(raster_distance(nonseed), fastgeodis_map(nonseed), err_msg=name)
    check_prompts_against(fastgeodis_map, tiny_sam)


def test_negative_points_of_a_batch_equal_one_by_one():
    masks = np.stack([SHAPES[n] for n in ("ring", "C shape", "three components", "thin vertical", "one pixel")])
    boxes = masks_to_xyxy(masks)
    together = raster_negative_points(masks, boxes)
    assert together == [raster_negative_points(m[None], b[None])[0] for m, b in zip(masks, boxes)]
    assert together[3] is None and together[4] is None  # one pixel wide: no region
    assert all(not masks[i][y, x] for i, point in enumerate(together[:3]) for x, y in [point])


def test_distance_flag_and_config_key_reach_the_refiner(monkeypatch):
    """The job's flags and the framework configs are generated from SAMRefiner's signature (mmdet passes
    its refiner dict to ``build_refiner`` as is)."""
    import os
    import runpy

    from refine_hooks.jobs.run import build_job_refiner
    from refine_hooks.refiners import build_refiner

    tool = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "tools", "refine_pseudo_labels.py"))
    parser = tool["build_parser"]()
    base = ["in.json", "--images", "dir", "--out", "out.json", "--model-type", "tiny", "--device", "cpu"]
    options = tool["options_from_args"](parser.parse_args(base + ["--distance", "raster"]))
    assert options.refiner_kwargs["distance"] == "raster"
    assert build_job_refiner(options).distance == "raster"
    assert "distance" not in tool["options_from_args"](parser.parse_args(base)).refiner_kwargs
    with pytest.raises(ValueError, match="distance must be one of"):
        build_job_refiner(tool["options_from_args"](parser.parse_args(base + ["--distance", "fast"])))
    assert build_refiner(dict(type="SAMRefiner", model_type="tiny", distance="raster")).distance == "raster"
