#!/usr/bin/env python
"""Mask AP and Boundary AP of instance-segmentation predictions on COCO or LVIS annotations.

    python tools/evaluate.py --gt instances_val2017.json --dt coco_instances_results.json
    python tools/evaluate.py --gt lvis_v1_val.json --dt instances_predictions.pth --lvis --workers 8
    python tools/evaluate.py --gt ground_truth.json --dt coarse.json --compare refined.json

Predictions: COCO result json (also MMDetection's *.segm.json), Detectron2 instances_predictions.pth or
MMDetection's tools/test.py --out .pkl. Prints the standard tables and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys

from refine_hooks import cli
from refine_hooks.data.annotations import atomic_write
from refine_hooks.evaluation.files import evaluate_files


def default_summary_path(dt: str) -> str:
    """``<dt>.eval.json`` next to --dt, its ``.json`` dropped: ``x.json`` -> ``x.eval.json``,
    ``x.pth`` -> ``x.pth.eval.json`` (so predictions ``x.json`` and ``x.pth`` keep apart)."""
    root = dt[: -len(".json")] if dt.lower().endswith(".json") else dt
    return root + ".eval.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO or LVIS annotation json")
    parser.add_argument("--dt", required=True, help="predictions (.json, Detectron2 .pth, MMDetection .pkl)")
    parser.add_argument("--compare", metavar="PRED_B", help="second predictions, printed side by side with deltas")
    parser.add_argument("--iou-type", nargs="+", default=["segm", "boundary"], choices=["segm", "boundary"])
    parser.add_argument("--lvis", action="store_true", help="LVIS federated evaluation (lvis-api; APr/APc/APf)")
    parser.add_argument("--max-dets", type=cli.positive_int, help="detections per image (default 100 COCO, 300 LVIS)")
    parser.add_argument("--workers", type=cli.positive_int, default=1, help="processes for boundary computation")
    parser.add_argument("--dilation-ratio", type=cli.positive_float, default=0.02,
                        help="boundary band width / image diagonal, greater than 0 (default 0.02)")
    parser.add_argument("--classes", nargs="+", help="MMDetection metainfo classes, if the config restricts them")
    parser.add_argument("--out", help="JSON summary path (default: <dt>.eval.json next to --dt, its .json dropped)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    inputs = {"--gt": args.gt, "--dt": args.dt, "--compare": args.compare}
    cli.require_files(inputs)
    out = args.out or default_summary_path(args.dt)
    cli.check_output_path("--out", out, suffixes=(".json",), what="the JSON summary")
    cli.refuse_overwriting_inputs({"--out": out}, inputs)
    summary, text = evaluate_files(
        args.gt, args.dt, compare_path=args.compare, iou_types=args.iou_type, lvis=args.lvis,
        max_dets=args.max_dets, workers=args.workers, dilation_ratio=args.dilation_ratio,
        classes=args.classes, progress=not args.no_progress)
    print(text)
    atomic_write(out, lambda handle: json.dump(summary, handle, indent=2))
    print(f"\nsummary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(ValueError,)))
