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

from refine_hooks import cli
from refine_hooks.data.annotations import written_suffixes
from refine_hooks.data.images import ImageReadError
from refine_hooks.jobs import (
    JobInputError,
    JobOptions,
    RefinerUnavailableError,
    WorkDirMismatchError,
    refine_annotation_file,
    summary_path,
)
from refine_hooks.sam import CheckpointUnavailableError
from refine_hooks.uncertainty.sidecar import uncertainty_path

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
        raise argparse.ArgumentTypeError(f"takes i/n with 0 <= i < n (e.g. 3/16), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"takes i/n with 0 <= i < n (parts are numbered from 0), got {text!r}")
    return index, count


def _hyper_parameter_help(name: str, default: Any) -> str:
    from refine_hooks.refiners import SAMRefiner

    return f"(default {default}: {SAMRefiner.DEFAULT_SOURCES.get(name, 'ours')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="COCO annotation json, COCO result json, or instances_predictions.pth")
    parser.add_argument("--images", required=True, metavar="DIR", help="directory the file_name entries are relative to")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output file, the same kind as IN: .json for JSON input, .pth for a .pth; "
                             "the summary goes to OUT.summary.json (OUT's .json dropped)")
    parser.add_argument("--image-info", metavar="JSON", help="COCO annotation file naming the images of a result list / .pth")

    model = parser.add_argument_group("refiner")
    model.add_argument("--refiner", default="samrefiner", choices=["samrefiner", "phoenix"],
                       help="samrefiner (training-free) or phoenix (a trained refiner: needs --refiner-checkpoint)")
    model.add_argument("--refiner-checkpoint", metavar="PATH",
                       help="--refiner phoenix: a checkpoint from tools/train_refiner.py, trained on this SAM")
    model.add_argument("--task", metavar="TASK",
                       help="--refiner phoenix: SUM's task prompt of a checkpoint trained on several tasks: pseudo, "
                            "salient_object, entity (or 0, 1, 2), none; default: the checkpoint's default task")
    model.add_argument("--model-type", default="vit_h", type=cli.model_type,
                       help=f"SAM variant: {cli.model_types_help()} (default vit_h); a tiny-SAM --checkpoint "
                            "carries its own architecture (the log says so)")
    model.add_argument("--checkpoint", help="SAM weights file (default: the official file, downloaded and cached)")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    model.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    model.add_argument("--decoder-chunk-size", type=cli.positive_int, default=None,
                       help="prompt sets per SAM decoder call on CUDA (bounds GPU memory; default 64). On CPU each "
                            "prompt set is decoded alone, so it changes nothing there and may change on resume; "
                            "on CUDA it can move rare boundary pixels, so a resumed CUDA job keeps it")
    model.add_argument("--iou-adapter", help="SAMRefiner++: an IoU adapter from tools/train_iou_adaption.py")
    hyper = parser.add_argument_group(
        "SAMRefiner hyper-parameters (each default, and whether it is the paper's, the authors' code's or ours)")
    for name, default in _samrefiner_hyper_parameters().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            hyper.add_argument(flag, dest=f"hp_{name}", action=argparse.BooleanOptionalAction, default=None,
                               help=_hyper_parameter_help(name, default))
        else:
            hyper.add_argument(flag, dest=f"hp_{name}", type=type(default) if default is not None else str,
                               default=None, metavar=name.upper(), help=_hyper_parameter_help(name, default))

    job = parser.add_argument_group("job")
    job.add_argument("--score-thr", type=float, default=0.0,
                     help="records with a lower 'score' are passed through (mask kept, reason below_score_thr), "
                          "not refined; above 0, records without a score (missing or null) are passed through "
                          "too (reason no_score). Default 0: refine every record")
    job.add_argument("--min-area", type=cli.non_negative_int, default=0, help="masks with fewer pixels are passed through")
    job.add_argument("--max-masks-per-batch", type=cli.positive_int, default=64, help="masks per refiner call (bounds memory)")
    job.add_argument("--images-per-batch", type=cli.positive_int, default=4, help="images per refiner call at most")
    job.add_argument("--workers", type=cli.non_negative_int, default=min(4, os.cpu_count() or 1),
                     help="DataLoader workers decoding images and masks (default: min(4, CPU cores))")
    job.add_argument("--limit", type=cli.positive_int, default=None, help="only the first N images (output holds only those)")
    job.add_argument("--skip-missing-images", action="store_true",
                     help="copy records of missing/unreadable images instead of stopping before any work")
    job.add_argument("--skip-invalid-records", action="store_true",
                     help="copy malformed records / wrong-size masks / unknown image ids instead of stopping")
    job.add_argument("--keep-coarse", action="store_true", help="store the input mask as 'coarse_segmentation'")
    job.add_argument("--chunk-size", type=cli.positive_int, default=64, help="images per shard file (the unit of resume)")
    job.add_argument("--shard", type=_shard, default=(0, 1), metavar="i/n",
                     help="process part i of n, numbered from 0 (0/4 .. 3/4; for cluster schedulers); the last "
                          "part to finish merges, and OUT.work/ is kept (delete it when every part has exited)")
    job.add_argument("--keep-work-dir", action="store_true",
                     help="keep OUT.work/ after the output is written (always kept with --shard)")
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
    if args.refiner_checkpoint:
        refiner_kwargs["refiner_checkpoint"] = os.path.abspath(args.refiner_checkpoint)
    if args.task is not None:
        refiner_kwargs["task"] = args.task
    return JobOptions(
        refiner=args.refiner,
        refiner_kwargs=refiner_kwargs,
        model_type=args.model_type,
        checkpoint=args.checkpoint,
        device=cli.checked_device(args.device),
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


def check_command_line(args: argparse.Namespace) -> None:
    """Everything that can be checked before the job reads its input (see refine_hooks.cli)."""
    inputs = {"IN": args.input, "--image-info": args.image_info, "--checkpoint": args.checkpoint,
              "--iou-adapter": args.iou_adapter, "--refiner-checkpoint": args.refiner_checkpoint,
              "--coarse-probabilities": args.coarse_probabilities}
    if args.refiner_checkpoint and args.refiner != "phoenix":
        cli.fail("--refiner-checkpoint is for --refiner phoenix")
    if args.refiner == "phoenix" and not args.refiner_checkpoint:
        cli.fail("--refiner phoenix needs --refiner-checkpoint PATH (a checkpoint from tools/train_refiner.py)")
    if args.task is not None and args.refiner != "phoenix":
        cli.fail("--task is for --refiner phoenix (a checkpoint trained with SUM's task prompt)")
    cli.require_files(inputs)
    cli.require_directory("--images", args.images)
    suffixes = written_suffixes(args.input)
    kind = "a torch archive like IN" if suffixes != (".json",) else "JSON like IN"
    cli.check_output_path("--out", args.out, suffixes=suffixes, what=kind)
    outputs = {"--out": args.out, "the summary of --out": summary_path(args.out)}
    if args.uncertainty:
        outputs["the uncertainty sidecar of --out"] = uncertainty_path(args.out)
    cli.refuse_overwriting_inputs(outputs, inputs)
    if args.iou_adapter:
        from refine_hooks.sam.iou_adaption import read_iou_adapter

        read_iou_adapter(args.iou_adapter)  # ValueError naming the file when it is not an adapter
    if args.refiner_checkpoint:
        from refine_hooks.sam.refiner_weights import read_refiner_checkpoint

        read_refiner_checkpoint(args.refiner_checkpoint)  # ValueError naming the file when it is not one


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_command_line(args)
    options = options_from_args(args)
    summary = refine_annotation_file(args.input, args.images, args.out, options)
    if summary.complete:
        print(summary.text())
        print(f"summary: {summary_path(args.out)}")
    elif summary.images_done_this_run or summary.seconds:
        print(f"this process is done ({summary.images_done_this_run} images); the output is written when all parts are done")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(JobInputError, ImageReadError, ValueError),
                     environment_errors=(WorkDirMismatchError, RefinerUnavailableError, CheckpointUnavailableError)))
