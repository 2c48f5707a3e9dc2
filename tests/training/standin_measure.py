"""How good is the stand-in for pre-trained SAM, and what does AMP make of it: a measurement, not a test
(pytest does not collect it). The numbers behind the README's "What the learning tests show".

    python tests/training/standin_measure.py                       # the learning test's stand-in (~2 min)
    python tests/training/standin_measure.py --prompt-embed-dim 64 --steps 4000 --train-images 4000 \\
        --amp-iterations 1000 --no-contrastive                     # a wider stand-in, then AMP (~40 min)
    python tests/training/standin_measure.py --model-type vit_b --checkpoint sam_vit_b_01ec64.pth \\
        --device cuda --amp-iterations 1000                        # real SAM weights instead (a GPU)

Fits the stand-in (``standin_sam.fit_standin_sam``) on generated training scenes and reports, on the
learning test's 30 held-out scenes (and on the first 200 training scenes): the mean IoU of its mask for each target's
mined points and tight box (what AMP perturbs), the IoU of simply filling each target's tight box, the
median area of its mask over the target's, and the share of targets it segments above 0.9 IoU. With
``--amp-iterations K`` it then trains a refiner with Phoenix's defaults (AMP, CMRL unless
``--no-contrastive``) through ``tools/train_refiner.py`` exactly as the learning test does and reports the
held-out noisy / before-training / after-training mean IoU and AMP's band outcomes. With ``--checkpoint``
the SAM is not fitted but loaded (real SAM weights, where they exist): the learning test's AMP question
asked of pre-trained SAM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np
import torch

from shapes import load_coco_masks, make_shapes_coco
from standin_sam import STANDIN_CONFIG, box_prompt_masks, fit_standin_sam, save_standin
from test_learning import STANDIN_STEPS, amp_outcomes, before_training, mean_held_out_iou, phoenix, train_refiner

from refine_hooks.data.masks import mask_iou
from refine_hooks.data.windows import mask_box
from refine_hooks.sam import build_sam_model


def box_fill(target: np.ndarray) -> np.ndarray:
    """The target's tight box, filled (bool ``H x W``)."""
    x0, y0, x1, y1 = mask_box(target)
    filled = np.zeros_like(target)
    filled[y0:y1 + 1, x0:x1 + 1] = True
    return filled


def segmentation_quality(sam, scenes, device: str) -> dict:
    """The stand-in's box-prompt masks against the targets, and filling the box as a baseline."""
    pairs = box_prompt_masks(sam, scenes, device)
    masks, targets = np.stack([m for m, _ in pairs]), np.stack([t for _, t in pairs])
    ious = mask_iou(masks, targets)
    fills = mask_iou(np.stack([box_fill(t) for t in targets]), targets)
    ratio = masks.reshape(len(masks), -1).sum(1) / targets.reshape(len(targets), -1).sum(1)
    return {"targets": len(pairs), "box_prompt_iou": round(float(ious.mean()), 4),
            "box_fill_iou": round(float(fills.mean()), 4), "median_area_ratio": round(float(np.median(ratio)), 3),
            "share_above_0.9": round(float((ious > 0.9).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-embed-dim", type=int, default=STANDIN_CONFIG.prompt_embed_dim)
    parser.add_argument("--steps", type=int, default=STANDIN_STEPS, help="stand-in fitting steps (batch 8)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--amp-iterations", type=int, default=0, help="then train a refiner this long (0: do not)")
    parser.add_argument("--contrastive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--checkpoint", default=None, help="SAM weights to use instead of fitting a stand-in")
    parser.add_argument("--model-type", default="tiny", help="the --checkpoint's SAM (vit_b, vit_l, vit_h, tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = args.work_dir or tempfile.mkdtemp(prefix="standin_")
    os.makedirs(root, exist_ok=True)

    config = dataclasses.replace(STANDIN_CONFIG, prompt_embed_dim=args.prompt_embed_dim)
    train = make_shapes_coco(root, num_images=args.train_images, seed=1, name="train")
    held = load_coco_masks(make_shapes_coco(root, num_images=30, seed=2, name="held"), root)
    train_scenes = load_coco_masks(train, root)
    start = time.perf_counter()
    if args.checkpoint:
        sam, checkpoint = build_sam_model(args.model_type, args.checkpoint, download=False), args.checkpoint
    else:
        sam, _ = fit_standin_sam(train_scenes, steps=args.steps, batch=8, config=config)
        checkpoint = save_standin(sam, os.path.join(root, "standin.pth"), config)
    report = {"config": vars(args), "fit_seconds": round(time.perf_counter() - start, 1),
              "held_out": segmentation_quality(sam, held, args.device),
              "train": segmentation_quality(sam, train_scenes[:200], args.device)}
    print(json.dumps(report), flush=True)
    if args.amp_iterations <= 0:
        return

    standin = {"root": root, "train": train, "checkpoint": checkpoint,
               "model_type": "tiny" if not args.checkpoint else args.model_type, "device": args.device}
    out = os.path.join(root, "phoenix.pth")
    options = ["--warmup", "5"] + ([] if args.contrastive else ["--no-contrastive"])
    start = time.perf_counter()
    log = train_refiner(standin, out, args.amp_iterations, *options)
    report["refiner"] = {"train_seconds": round(time.perf_counter() - start, 1), "amp": amp_outcomes(log)}
    before = before_training(out, sam, os.path.join(root, "before.pth"))
    for name, path in (("before", before), ("after", out)):
        noisy, report["refiner"][name] = (round(value, 4) for value in mean_held_out_iou(phoenix(standin, path), held))
    report["refiner"]["noisy"] = noisy
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
