#!/usr/bin/env python
r"""Test an MMDetection 3.x config with SAM refinement of its masks (a thin shell over
``refine_hooks.mmdet.testing``).

    python tools/mmdet_test.py configs/mmdet/mask-rcnn_r50_fpn_1x_coco_refined.py mask_rcnn.pth
    python tools/mmdet_test.py mmdet::solov2/solov2_r50_fpn_1x_coco.py solov2.pth \
        --refiner-checkpoint sam_vit_h_4b8939.pth --score-thr 0.3
    python tools/mmdet_test.py CONFIG CKPT --no-refine --out coarse.pkl     # without refinement
    python tools/mmdet_test.py CONFIG CKPT --out refined.pkl
    python tools/evaluate.py --gt ANN.json --dt coarse.pkl --compare refined.pkl

A config without refinement gets MaskRefinementHook. Distributed: torchrun --nproc-per-node N
tools/mmdet_test.py CONFIG CKPT --launcher pytorch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mmengine.config import DictAction

from refine_hooks import cli
from refine_hooks.data.annotations import atomic_write
from refine_hooks.files import not_a_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file, or mmdet::<path> of a stock config")
    parser.add_argument("checkpoint", help="detector checkpoint (a file, or a URL mmengine downloads)")
    parser.add_argument("--work-dir", help="where logs and metrics go (default work_dirs/<config name>)")
    parser.add_argument("--refiner-model", type=cli.model_type,
                        help=f"SAM variant: {cli.model_types_help()} (default: the config's)")
    parser.add_argument("--refiner-checkpoint", help="SAM weights file (default: download and cache)")
    parser.add_argument("--score-thr", type=float,
                        help="refine only detections with at least this score; the others keep their masks")
    parser.add_argument("--keep-unrefined", action="store_true", help="keep the detector's masks beside the refined")
    parser.add_argument("--no-refine", action="store_true", help="test without refinement")
    parser.add_argument("--out", help="dump the predictions (refined, or the detector's with --no-refine) to this "
                                      ".pkl, as mmdet's tools/test.py --out does; tools/evaluate.py reads it")
    parser.add_argument("--metrics-out", help="write the metrics to this JSON file")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries (key=value)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from refine_hooks.mmdet.testing import build_test_config, resolve_config_path, run_test

    try:
        config_path = resolve_config_path(args.config)
    except FileNotFoundError as error:
        cli.fail(str(error))
    # mmengine also loads checkpoints from URLs (https://download.openmmlab.com/...): those are not files here.
    local_checkpoint = None if "://" in args.checkpoint else args.checkpoint
    inputs = {"CONFIG": config_path, "CHECKPOINT": local_checkpoint, "--refiner-checkpoint": args.refiner_checkpoint}
    cli.require_files(inputs)
    problem = not_a_checkpoint(local_checkpoint) if local_checkpoint else None
    if problem:  # mmengine would load it only after building the model and the dataset
        cli.fail(f"CHECKPOINT {local_checkpoint}: {problem}")
    if args.out:
        cli.check_output_path("--out", args.out, suffixes=(".pkl", ".pickle"), what="a pickle of the predictions")
    if args.metrics_out:
        cli.check_output_path("--metrics-out", args.metrics_out, suffixes=(".json",), what="the JSON metrics")
    cli.refuse_overwriting_inputs({"--out": args.out, "--metrics-out": args.metrics_out}, inputs)

    refiner = {}
    if args.refiner_model:
        refiner["model_type"] = args.refiner_model
    if args.refiner_checkpoint:
        refiner["checkpoint"] = os.path.abspath(args.refiner_checkpoint)
    hook_options = {}
    if args.score_thr is not None:
        hook_options["score_thr"] = args.score_thr
    if args.keep_unrefined:
        hook_options["keep_unrefined"] = True
    cfg = build_test_config(config_path, args.checkpoint, work_dir=args.work_dir, cfg_options=args.cfg_options,
                            refiner=refiner, hook_options=hook_options, refine=not args.no_refine,
                            launcher=args.launcher)
    metrics = run_test(cfg, predictions_out=args.out)
    if args.metrics_out:
        atomic_write(args.metrics_out, lambda handle: json.dump(metrics, handle, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, errors=(FileNotFoundError,)))
