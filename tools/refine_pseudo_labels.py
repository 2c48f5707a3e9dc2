#!/usr/bin/env python
"""Refine every mask of a pseudo-label file with a SAM-based refiner; resumable and multi-GPU.

    python tools/refine_pseudo_labels.py IN --images DIR --out OUT [options]
    torchrun --nproc_per_node=8 tools/refine_pseudo_labels.py IN --images DIR --out OUT [options]

IN is a COCO annotation file, a COCO result list or a Detectron2 instances_predictions.pth (the last two
need --image-info). Rerun the same command after a crash to resume. See docs/pseudo_labels.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from refine_hooks.data.images import ImageReadError
from refine_hooks.sam import CheckpointUnavailableError
from refine_hooks.jobs import (
    JobInputError,
    JobOptions,
    RefinerUnavailableError,
    WorkDirMismatchError,
    refine_annotation_file,
    summary_path,
)

# SAMRefiner constructor arguments the job sets itself, or that are not hyper-parameters.
# min_area is the job's own option; semantic_margin and stm_mu concern semantic masks, which the job has not.
_NOT_HYPER_PARAMETERS = {"min_area", "semantic_margin", "stm_mu"}


def _samrefiner_hyper_parameters() -> Dict[str, Any]:
    from refine_hooks.refiners import SAMRefiner

    return {name: default for name, default in SAMRefiner.hyper_parameters().items() if name not in _NOT_HYPER_PARAMETERS}


def _shard(text: str):
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 3/16), got {text!r}") from None
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="COCO annotation json, COCO result json, or instances_predictions.pth")
    parser.add_argument("--images", required=True, metavar="DIR", help="directory the file_name entries are relative to")
    parser.add_argument("--out", required=True, metavar="OUT", help="output file (same kind as IN)")
    parser.add_argument("--image-info", metavar="JSON", help="COCO annotation file naming the images of a result list / .pth")

    model = parser.add_argument_group("refiner")
    model.add_argument("--refiner", default="samrefiner", choices=["samrefiner", "phoenix"])
    model.add_argument("--model-type", default="vit_h", help="vit_b, vit_l, vit_h, sam_hq_vit_*, tiny (default vit_h)")
    model.add_argument("--checkpoint", help="SAM weights file (default: the official file, downloaded and cached)")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    model.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    model.add_argument("--decoder-chunk-size", type=int, default=None, help="prompts per SAM decoder call")
    model.add_argument("--iou-adapter", help="SAMRefiner++: an IoU adapter from tools/train_iou_adaption.py")
    hyper = parser.add_argument_group("SAMRefiner hyper-parameters (default: the authors')")
    for name, default in _samrefiner_hyper_parameters().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            hyper.add_argument(flag, dest=f"hp_{name}", action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default {default})")
        else:
            hyper.add_argument(flag, dest=f"hp_{name}", type=type(default) if default is not None else str,
                               default=None, metavar=name.upper(), help=f"(default {default})")

    job = parser.add_argument_group("job")
    job.add_argument("--score-thr", type=float, default=0.0, help="records with a lower 'score' are copied, not refined")
    job.add_argument("--min-area", type=int, default=0, help="masks with fewer pixels are passed through")
    job.add_argument("--max-masks-per-batch", type=int, default=64, help="masks per refiner call (bounds memory)")
    job.add_argument("--images-per-batch", type=int, default=4, help="images per refiner call at most")
    job.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                     help="DataLoader workers decoding images and masks (default: min(4, CPU cores))")
    job.add_argument("--limit", type=int, default=None, help="only the first N images (output holds only those)")
    job.add_argument("--skip-missing-images", action="store_true",
                     help="copy records of missing/unreadable images instead of stopping before any work")
    job.add_argument("--skip-invalid-records", action="store_true",
                     help="copy malformed records / wrong-size masks / unknown image ids instead of stopping")
    job.add_argument("--keep-coarse", action="store_true", help="store the input mask as 'coarse_segmentation'")
    job.add_argument("--chunk-size", type=int, default=64, help="images per shard file (the unit of resume)")
    job.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/n",
                     help="process part i of n (for cluster schedulers); the last part to finish merges")
    job.add_argument("--keep-work-dir", action="store_true", help="keep OUT.work/ after the output is written")
    job.add_argument("--no-progress", action="store_true", help="no progress bars")

    sum_ = parser.add_argument_group("uncertainty (SUM; docs/uncertainty.md)")
    sum_.add_argument("--uncertainty", action="store_true",
                      help="also write each refined record's uncertainty map to <OUT>.uncertainty.bin")
    sum_.add_argument("--coarse-probabilities", metavar="FILE",
                      help="the detector's mask probabilities of IN (written by the framework hooks), used as sigma(s)")
    sum_.add_argument("--coarse-width", type=float, default=JobOptions.coarse_width,
                      help="width in pixels of the signed-distance sigmoid that stands for a binary coarse mask's "
                           f"probabilities (default {JobOptions.coarse_width})")
    sum_.add_argument("--uncertainty-theta", type=float, default=JobOptions.uncertainty_theta,
                      help=f"certainty threshold of the per-record summary (default {JobOptions.uncertainty_theta})")
    return parser


def options_from_args(args: argparse.Namespace) -> JobOptions:
    refiner_kwargs: Dict[str, Any] = {
        key[3:]: value for key, value in vars(args).items() if key.startswith("hp_") and value is not None
    }
    if args.decoder_chunk_size is not None:
        refiner_kwargs["decoder_chunk_size"] = args.decoder_chunk_size
    if args.iou_adapter:
        refiner_kwargs["iou_adapter"] = os.path.abspath(args.iou_adapter)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return JobOptions(
        refiner=args.refiner,
        refiner_kwargs=refiner_kwargs,
        model_type=args.model_type,
        checkpoint=args.checkpoint,
        device=device,
        precision=args.precision,
        score_thr=args.score_thr,
        min_area=args.min_area,
        max_masks_per_batch=args.max_masks_per_batch,
        images_per_batch=args.images_per_batch,
        workers=args.workers,
        limit=args.limit,
        skip_missing_images=args.skip_missing_images,
        skip_invalid_records=args.skip_invalid_records,
        keep_coarse=args.keep_coarse,
        image_info=args.image_info,
        chunk_size=args.chunk_size,
        shard=args.shard,
        keep_work_dir=args.keep_work_dir,
        progress=not args.no_progress,
        uncertainty=args.uncertainty,
        coarse_probabilities=args.coarse_probabilities,
        coarse_width=args.coarse_width,
        uncertainty_theta=args.uncertainty_theta,
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        summary = refine_annotation_file(args.input, args.images, args.out, options)
    except (JobInputError, ImageReadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (WorkDirMismatchError, RefinerUnavailableError, CheckpointUnavailableError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    if summary.complete:
        print(summary.text())
        print(f"summary: {summary_path(args.out)}")
    elif summary.images_done_this_run or summary.seconds:
        print(f"this process is done ({summary.images_done_this_run} images); the output is written when all parts are done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
