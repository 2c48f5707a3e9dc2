#!/usr/bin/env python
"""Test an MMDetection 3.x config with SAM refinement of its masks (a thin shell over
``refine_hooks.mmdet.testing``).

    python tools/mmdet_test.py configs/mmdet/mask-rcnn_r50_fpn_1x_coco_refined.py mask_rcnn.pth
    python tools/mmdet_test.py mmdet::solov2/solov2_r50_fpn_1x_coco.py solov2.pth \
        --refiner-checkpoint sam_vit_h_4b8939.pth --score-thr 0.3
    python tools/mmdet_test.py CONFIG CKPT --no-refine          # the same config without refinement

A config without refinement gets MaskRefinementHook. Distributed: torchrun --nproc-per-node N
tools/mmdet_test.py CONFIG CKPT --launcher pytorch.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmengine.config import DictAction


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file, or mmdet::<path> of a stock config")
    parser.add_argument("checkpoint", help="detector checkpoint")
    parser.add_argument("--work-dir", help="where logs and metrics go (default work_dirs/<config name>)")
    parser.add_argument("--refiner-model", help="SAM variant: vit_b, vit_l, vit_h (default: the config's)")
    parser.add_argument("--refiner-checkpoint", help="SAM weights file (default: download and cache)")
    parser.add_argument("--score-thr", type=float, help="refine only detections with at least this score")
    parser.add_argument("--keep-unrefined", action="store_true", help="keep the detector's masks beside the refined")
    parser.add_argument("--no-refine", action="store_true", help="test without refinement")
    parser.add_argument("--out", help="write the metrics to this JSON file")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries (key=value)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    args = parser.parse_args(argv)

    from refine_hooks.mmdet.testing import build_test_config, run_test

    refiner = {}
    if args.refiner_model:
        refiner["model_type"] = args.refiner_model
    if args.refiner_checkpoint:
        refiner["checkpoint"] = args.refiner_checkpoint
    hook_options = {}
    if args.score_thr is not None:
        hook_options["score_thr"] = args.score_thr
    if args.keep_unrefined:
        hook_options["keep_unrefined"] = True
    try:
        cfg = build_test_config(args.config, args.checkpoint, work_dir=args.work_dir, cfg_options=args.cfg_options,
                                refiner=refiner, hook_options=hook_options, refine=not args.no_refine,
                                launcher=args.launcher)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = run_test(cfg)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
