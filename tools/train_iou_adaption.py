r"""SAMRefiner++: train the IoU adapter of a SAM on a dataset's coarse masks (no ground truth needed).

    python tools/train_iou_adaption.py pseudo_labels.json --images train2017/ --model-type vit_h \
        --out adapters/vit_h_coco.pth
    python tools/refine_pseudo_labels.py pseudo_labels.json --images train2017/ --out refined.json \
        --model-type vit_h --iou-adapter adapters/vit_h_coco.pth

The input is any mask-record file the pseudo-label job reads (COCO annotations, a COCO result list with
``--image-info``, a Detectron2 ``.pth``). Settings default to the authors' (one epoch, SGD lr 1e-2, rank-4
LoRA, margin 0.02, 5 samples per step, lr steps at 60 and 100).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from refine_hooks import cli  # noqa: E402
from refine_hooks.sam import CheckpointUnavailableError, SamEngine, build_sam_model  # noqa: E402
from refine_hooks.training import CoarseMaskDataset, IoUAdaptionConfig, IoUAdaptionTrainer  # noqa: E402

# argparse types of the training settings (IoUAdaptionConfig checks them too, with a traceback)
_SETTING_TYPES = {"epochs": cli.positive_int, "accumulate": cli.positive_int, "rank": cli.positive_int,
                  "min_area": cli.non_negative_int, "lr": cli.positive_float, "momentum": cli.non_negative_float,
                  "weight_decay": cli.non_negative_float, "margin": cli.non_negative_float,
                  "alpha": cli.positive_float, "seed": int}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    defaults = IoUAdaptionConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("annotations", help="coarse masks: COCO annotation file, result list or Detectron2 .pth")
    parser.add_argument("--images", required=True, help="directory the file's file_names are relative to")
    parser.add_argument("--image-info", help="COCO file naming the images of a result list / .pth")
    parser.add_argument("--out", required=True, help="adapter file to write (.pth)")
    parser.add_argument("--model-type", default="vit_h", type=cli.model_type,
                        help=f"SAM variant: {cli.model_types_help()} (default vit_h)")
    parser.add_argument("--checkpoint", help="SAM weights (default: the official file, downloaded and cached)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--limit", type=cli.positive_int, help="train on the first N images (with masks) only")
    for name in ("epochs", "lr", "momentum", "weight_decay", "accumulate", "margin", "rank", "alpha", "seed", "min_area"):
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=_SETTING_TYPES[name], default=value,
                            help=f"(default {value})")
    parser.add_argument("--milestones", type=cli.positive_int, nargs="*", default=list(defaults.milestones),
                        help=f"optimizer steps where lr is multiplied by --gamma (default {list(defaults.milestones)})")
    parser.add_argument("--gamma", type=cli.positive_float, default=defaults.gamma)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    inputs = {"ANNOTATIONS": args.annotations, "--image-info": args.image_info, "--checkpoint": args.checkpoint}
    cli.require_files(inputs)
    cli.require_directory("--images", args.images)
    cli.check_output_path("--out", args.out, suffixes=(".pth", ".pt"), what="the adapter (a torch archive)")
    cli.refuse_overwriting_inputs({"--out": args.out}, inputs)
    device = cli.checked_device(args.device)

    # Everything about the data is checked before a model is built.
    dataset = CoarseMaskDataset(args.annotations, args.images, args.image_info)
    if args.limit is not None:
        dataset.image_ids = dataset.image_ids[: args.limit]
    if len(dataset) == 0:
        cli.fail(f"{args.annotations} has no non-crowd masks to train on")
    if dataset.num_masks < args.accumulate:
        cli.fail(f"{args.annotations}: {dataset.num_masks} non-crowd masks in {len(dataset)} images"
                 f"{' (--limit ' + str(args.limit) + ')' if args.limit else ''}, fewer than --accumulate "
                 f"{args.accumulate} samples per optimiser step: no step could be made (use more images or a "
                 "smaller --accumulate)")
    problems = dataset.check_inputs(progress=not args.no_progress)
    if problems:
        cli.fail("stopped before training: " + "\n".join(problems))

    config = IoUAdaptionConfig(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               accumulate=args.accumulate, margin=args.margin, rank=args.rank, alpha=args.alpha,
                               seed=args.seed, min_area=args.min_area, milestones=tuple(args.milestones),
                               gamma=args.gamma)
    model = build_sam_model(args.model_type, args.checkpoint)
    trainer = IoUAdaptionTrainer(SamEngine(model, device=device), config)
    progress = None if args.no_progress else (lambda order: tqdm(order, desc="IoU adaption", unit="image"))
    log = trainer.train(dataset, progress=progress)
    if log.steps == 0:
        cli.fail(f"{args.annotations}: no optimiser step was made: {log.samples} masks over {args.epochs} epoch(s) "
                 f"({log.skipped} under --min-area skipped), and a step needs --accumulate {args.accumulate} within "
                 f"one epoch; the adapter would be untrained, so {args.out} was not written")
    path = trainer.save(args.out, model_type=args.model_type,
                        checkpoint=os.path.abspath(args.checkpoint) if args.checkpoint else None,
                        annotations=os.path.abspath(args.annotations), images=len(dataset))
    print(log.text())
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(ValueError,), environment_errors=(CheckpointUnavailableError,)))
