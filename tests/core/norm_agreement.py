"""How often the elastic box changes between the previous embedding norm (float32 resize, kept in
test_mining_speedups.py) and the current one (``resize.mapped_norm``): a measurement, not a test.

    python tests/core/norm_agreement.py --model-type tiny --images 40
    python tests/core/norm_agreement.py --model-type vit_b --images 16

Random-weight SAM (``build_random_sam``), generated images of four sizes, 50 benchmark ellipses and 30 blobs
each, λ = 0.1, 0.02 and 0.3: counts the elastic boxes that differ and the strip pixels whose similarity
decision differs (``similar_near`` around each tight box).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from mining_benchmark import load_reference
from refine_hooks.benchmarks.refiner import generate_scene
from refine_hooks.data.masks import masks_to_xyxy
from refine_hooks.prompts import EmbeddingSimilarity
from refine_hooks.refiners import SAMRefiner
from refine_hooks.sam import SamEngine, build_random_sam

SIZES = [(480, 640), (640, 480), (375, 500), (512, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    reference = load_reference()
    engine = SamEngine(build_random_sam(args.model_type))
    refiner = SAMRefiner(engine)
    boxes_changed = boxes = pixels_flipped = pixels = 0
    for seed in range(args.images):
        height, width = SIZES[seed % len(SIZES)]
        image, ellipses = generate_scene(height, width, 50, seed=seed)
        masks = np.concatenate([ellipses[ellipses.reshape(50, -1).any(axis=1)], reference.blobs(30, height, width, seed)[:30]])
        embedding = engine.encode([image])[0]
        current = EmbeddingSimilarity(embedding.features, embedding.original_size)
        previous = reference.previous_similarity(current)
        for margin in (0.1, 0.02, 0.3):
            a = refiner._prompts(embedding, masks, previous, margin)["boxes"]
            b = refiner._prompts(embedding, masks, current, margin)["boxes"]
            boxes_changed += int((a != b).any(dim=1).sum())
            boxes += len(masks)
        tight = masks_to_xyxy(masks)
        for old, new in zip(previous.similar_near(masks, tight), current.similar_near(masks, tight)):
            pixels_flipped += int((old.values != new.values).sum())
            pixels += old.values.size
        print(f"image {seed + 1}/{args.images}: elastic boxes changed {boxes_changed} of {boxes}; "
              f"strip pixels flipped {pixels_flipped} of {pixels}", flush=True)


if __name__ == "__main__":
    main()
