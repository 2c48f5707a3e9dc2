"""Prompt mining and postprocessing before issue 13 (the reference code kept in test_mining_speedups.py)
and now, on the same masks in one process: a measurement, not a test (pytest does not collect it).

    python tests/core/mining_benchmark.py --image-size 480x640 --masks 50
    python tests/core/mining_benchmark.py --image-size 1024x1024 --masks 200
    python tests/core/mining_benchmark.py --image-size 480x640 --masks 50 --shapes blobs

Runs SAMRefiner's 5-iteration cascade on the benchmark's ellipses (``--shapes blobs``: masks as large as
the image, like a random-weight SAM's outputs) with vit_b's frames and a 256-channel embedding, the
decoder replaced by a stand-in that returns each mask prompt moved by one low-res pixel (so no mask
converges and every iteration mines and postprocesses every mask). Prints the seconds outside the
stand-in decoder, best of 3, for the previous code and the current one, after checking that both return
the same masks.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
import torch

from refine_hooks.benchmarks.refiner import generate_scene
from refine_hooks.prompts import EmbeddingSimilarity
from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine, build_random_sam
from refine_hooks.sam.engine import ImageEmbedding, resized_shape

HERE = os.path.dirname(os.path.abspath(__file__))


def load_reference():
    spec = importlib.util.spec_from_file_location("mining_reference", os.path.join(HERE, "test_mining_speedups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ShiftingDecoder:
    """Stands in for ``SamEngine.decode``: each mask prompt moved right by one low-res pixel, as 3
    candidates of fixed predicted IoU; counts its own seconds so they can be left out."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, embedding, multimask_output=True, mask_inputs=None, **_):
        start = time.perf_counter()
        logits = torch.roll(mask_inputs, 1, dims=-1).expand(-1, 3 if multimask_output else 1, -1, -1).contiguous()
        ious = torch.linspace(0.1, 0.9, logits.shape[1]).expand(logits.shape[0], -1).contiguous()
        self.seconds += time.perf_counter() - start
        return logits, ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", default="480x640", help="HxW")
    parser.add_argument("--masks", type=int, default=50)
    parser.add_argument("--shapes", choices=("ellipses", "blobs"), default="ellipses")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.image_size.split("x"))
    reference = load_reference()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    engine = SamEngine(build_random_sam("vit_b"))
    decoder = ShiftingDecoder()
    engine.decode = decoder
    refiner = SAMRefiner(engine)
    features = torch.nn.functional.avg_pool2d(torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0)), 3, 1, 1)
    if args.shapes == "ellipses":
        _, masks = generate_scene(height, width, args.masks, seed=0)
        masks = masks[masks.reshape(len(masks), -1).any(axis=1)]
    else:
        masks = reference.blobs(args.masks, height, width, seed=0)[: args.masks]

    def cascade(previous: bool):
        embedding = ImageEmbedding(features, (height, width), resized_shape(height, width, 1024))
        decoder.seconds = 0.0
        start = time.perf_counter()
        similarity = EmbeddingSimilarity(embedding.features, (height, width))
        if previous:  # the previous code's norm replaces this one's (its time is added below)
            similarity.norm = reference.similarity_norm(similarity.valid_features, (height, width))
            out = reference.cascade(refiner, embedding, masks, similarity, refiner.margin)[0]
        else:
            out = refiner._cascade(embedding, masks, similarity, refiner.margin)[0]
        return time.perf_counter() - start - decoder.seconds, out

    def best(function):
        return min(function() for _ in range(args.repeats))

    def timed(function):
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    probe = EmbeddingSimilarity(features, (height, width))
    new_norm = best(lambda: timed(lambda: EmbeddingSimilarity(features, (height, width))))
    old_norm = best(lambda: timed(lambda: reference.similarity_norm(probe.valid_features, (height, width))))
    runs = {"before": [], "now": []}
    for _ in range(args.repeats):  # alternating, so that both see the same machine
        for name in runs:
            runs[name].append(cascade(name == "before"))
    if not np.array_equal(runs["before"][0][1], runs["now"][0][1]):
        raise SystemExit("the previous and the current code returned different masks")
    before = [seconds - new_norm for seconds, _ in runs["before"]]  # its similarity was built by the current code
    now = [seconds for seconds, _ in runs["now"]]
    ratios = sorted(b / n for b, n in zip(before, now))
    print(f"{height}x{width}, {len(masks)} {args.shapes}, 5 iterations: before {min(before):.3f} s, now {min(now):.3f} s "
          f"(best of {args.repeats}: {min(before) / min(now):.2f}x; per alternating pair {ratios[0]:.2f}x to {ratios[-1]:.2f}x, "
          f"median {ratios[len(ratios) // 2]:.2f}x); the elastic box's embedding norm: before {old_norm:.3f} s, now "
          f"{new_norm:.3f} s (with its resize maps)")


if __name__ == "__main__":
    main()
