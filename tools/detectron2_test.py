"""Evaluate a Detectron2 instance segmenter, refined or not, with mask AP and Boundary AP.

The equivalent of Detectron2's ``tools/train_net.py --eval-only`` for refined models:

    # yacs: a model-zoo or local config, plus the refinement overlay
    python tools/detectron2_test.py --config-file model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \
        --refiner-config configs/detectron2/samrefiner.yaml MODEL.WEIGHTS model_final.pkl
    # LazyConfig
    python tools/detectron2_test.py --config-file configs/detectron2/mask_rcnn_R_50_FPN_1x_samrefiner.py \
        train.init_checkpoint=model_final.pkl
    # a project's config (Mask2Former): its config functions first, as its train_net.py calls them
    python tools/detectron2_test.py --add-config detectron2.projects.deeplab:add_deeplab_config \
        --add-config mask2former:add_maskformer2_config \
        --config-file $MASK2FORMER/configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --refiner-config configs/detectron2/mask2former_samrefiner.yaml MODEL.WEIGHTS model_final_3c8ec9.pkl

Datasets are the config's test sets (``DATASETS.TEST`` / ``dataloader.test``); ``--register NAME JSON
IMAGE_ROOT`` registers a COCO-format set first. LVIS sets (metadata ``evaluator_type == "lvis"``, or
``--lvis``) use the federated LVIS evaluation. Results are printed and written to
``<output>/evaluation.json``; the refined predictions to ``<output>/<dataset>/refine_hooks_segm_results.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL_ZOO_PREFIX = "model_zoo:"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True,
                        help=f"yacs .yaml (or {MODEL_ZOO_PREFIX}<path in Detectron2's model zoo>) or LazyConfig .py")
    parser.add_argument("--refiner-config", action="append", default=[],
                        help="yacs .yaml merged after --config-file (e.g. configs/detectron2/samrefiner.yaml)")
    parser.add_argument("--add-config", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="yacs: call FUNCTION(cfg) before merging --config-file, as a project's train_net.py "
                             "does (e.g. mask2former:add_maskformer2_config); importing MODULE also registers "
                             "its meta-architectures")
    parser.add_argument("--register", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format dataset before evaluating")
    parser.add_argument("--lvis", action="store_true", help="evaluate every test set with LVIS rules")
    parser.add_argument("--iou-type", nargs="+", default=["segm", "boundary"], choices=["segm", "boundary"])
    parser.add_argument("--output", default="outputs/detectron2_test")
    parser.add_argument("--workers", type=int, default=1, help="processes computing boundaries")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine (1: no DDP; 0 runs on CPU)")
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE (yacs) or key=value (lazy)")
    return parser.parse_args(argv)


def config_adders(specs: List[str]) -> List[Any]:
    """The ``FUNCTION`` of each ``MODULE:FUNCTION`` (importing ``MODULE``); SystemExit names a bad one."""
    adders = []
    for spec in specs:
        module_name, _, function = spec.partition(":")
        if not module_name or not function:
            raise SystemExit(f"--add-config {spec!r}: expected MODULE:FUNCTION, e.g. mask2former:add_maskformer2_config")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise SystemExit(f"--add-config {spec}: cannot import {module_name}: {error}") from error
        adder = getattr(module, function, None)
        if not callable(adder):
            raise SystemExit(f"--add-config {spec}: {module_name} has no function {function}")
        adders.append(adder)
    return adders


def setup_yacs(args: argparse.Namespace):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from refine_hooks.detectron2 import add_refiner_config

    cfg = get_cfg()
    for add_config in config_adders(args.add_config):
        add_config(cfg)
    add_refiner_config(cfg)
    path = args.config_file
    if path.startswith(MODEL_ZOO_PREFIX):
        path = model_zoo.get_config_file(path[len(MODEL_ZOO_PREFIX):])
    cfg.merge_from_file(path)
    for overlay in args.refiner_config:
        cfg.merge_from_file(overlay)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = checked_device(cfg.MODEL.DEVICE, args)
    cfg.freeze()
    return cfg


def checked_device(device: str, args: argparse.Namespace) -> str:
    """The config's device, or ``cpu`` with ``--num-gpus 0`` or when CUDA is not available (said so)."""
    import torch

    if args.num_gpus == 0:
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("refine_hooks").warning("the config asks for %s but CUDA is not available: running on CPU", device)
        return "cpu"
    return device


def build_evaluator(dataset_name: str, args: argparse.Namespace):
    from detectron2.data import MetadataCatalog

    from refine_hooks.detectron2 import COCOBoundaryEvaluator, LVISBoundaryEvaluator

    lvis = args.lvis or getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "") == "lvis"
    evaluator = LVISBoundaryEvaluator if lvis else COCOBoundaryEvaluator
    return evaluator(dataset_name, args.iou_type, output_dir=os.path.join(args.output, dataset_name),
                     workers=args.workers)


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the model, load its weights, evaluate every test set; returns ``{dataset: results}``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import build_detection_test_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    import refine_hooks.detectron2  # noqa: F401 (registers RefinedMetaArch)

    setup_logger(name="refine_hooks")
    setup_logger(name="detectron2")
    for name, json_file, image_root in args.register:
        register_coco_instances(name, {}, json_file, image_root)
    results: Dict[str, Any] = {}
    if args.config_file.endswith(".py"):
        cfg = LazyConfig.load(args.config_file)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
        cfg.train.device = checked_device(cfg.train.device, args)
        model = instantiate(cfg.model).to(cfg.train.device).eval()
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        names = cfg.dataloader.test.dataset.names
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            cfg.dataloader.test.dataset.names = name
            results[name] = inference_on_dataset(model, instantiate(cfg.dataloader.test), build_evaluator(name, args))
    else:
        cfg = setup_yacs(args)
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        for name in cfg.DATASETS.TEST:
            results[name] = inference_on_dataset(model, build_detection_test_loader(cfg, name), build_evaluator(name, args))
    stats = getattr(model, "refinement_stats", None)
    if comm.is_main_process():
        os.makedirs(args.output, exist_ok=True)
        summary = {"results": results, "processes": comm.get_world_size(),
                   "refinement": stats.text() if stats is not None else "not refined"}
        path = os.path.join(args.output, "evaluation.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)
        for name, values in results.items():
            for iou_type, metrics in values.items():
                line = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if not k.startswith("AP-"))
                print(f"{name} {iou_type}: {line}")
        print(f"refinement (this process): {summary['refinement']}")
        print(f"written: {path}")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        from detectron2.engine import launch
    except ImportError:
        print("tools/detectron2_test.py needs Detectron2, which is not on PyPI; see README, 'Detectron2'.",
              file=sys.stderr)
        return 2
    config_adders(args.add_config)  # a bad --add-config stops here, before any process starts
    if args.num_gpus <= 1:
        evaluate(args)
    else:
        launch(evaluate, args.num_gpus, dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
