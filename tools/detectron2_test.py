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

Before any model is built the command line and the config are checked: files exist, config keys exist, the
weights are a file (or a URL / ``detectron2://`` path), and every test set is registered; a problem stops the
tool with one ``error:`` line and exit status 2.
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

from refine_hooks import cli  # noqa: E402
from refine_hooks.files import not_a_checkpoint  # noqa: E402

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
    parser.add_argument("--workers", type=cli.positive_int, default=1, help="processes computing boundaries")
    parser.add_argument("--num-gpus", type=cli.non_negative_int, default=1,
                        help="GPUs per machine (1: no DDP; 0 runs on CPU)")
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE (yacs) or key=value (lazy)")
    return parser.parse_args(argv)


def config_adders(specs: List[str]) -> List[Any]:
    """The ``FUNCTION`` of each ``MODULE:FUNCTION`` (importing ``MODULE``); :class:`cli.CliError` names a bad one."""
    adders = []
    for spec in specs:
        module_name, _, function = spec.partition(":")
        if not module_name or not function:
            cli.fail(f"--add-config {spec!r}: expected MODULE:FUNCTION, e.g. mask2former:add_maskformer2_config")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            cli.fail(f"--add-config {spec}: cannot import {module_name}: {error}")
        adder = getattr(module, function, None)
        if not callable(adder):
            cli.fail(f"--add-config {spec}: {module_name} has no function {function}")
        adders.append(adder)
    return adders


def check_command_line(args: argparse.Namespace) -> None:
    """The files the command line names exist, and ``--output`` can be a directory."""
    if not args.config_file.startswith(MODEL_ZOO_PREFIX):
        cli.require_files({"--config-file": args.config_file})
    cli.require_files({"--refiner-config": args.refiner_config})
    for name, json_file, image_root in args.register:
        cli.require_files({f"--register {name}": json_file})
        cli.require_directory(f"--register {name}", image_root)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        cli.fail(f"--output {args.output}: is a file; --output is the directory the results are written to")


# Weights Detectron2's checkpointer fetches itself (its PathManager handlers); anything else is a local file.
_REMOTE_WEIGHTS = ("detectron2://", "http://", "https://", "catalog://", "manifold://")


def check_config(args: argparse.Namespace) -> None:
    """Build the config as :func:`evaluate` will and check it before any model exists: its keys (yacs refuses
    keys that do not exist; LazyConfig overrides create them, as Detectron2 does), its weights (a file, or a
    path Detectron2 downloads; not empty, which would evaluate random weights) and its test sets (registered,
    ``--register`` included)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    for name, json_file, image_root in args.register:
        if name in DatasetCatalog.list():
            cli.fail(f"--register {name}: a dataset of that name is already registered (a Detectron2 builtin?); "
                     "choose another name")
        register_coco_instances(name, {}, json_file, image_root)
    try:
        if args.config_file.endswith(".py"):
            from detectron2.config import LazyConfig

            cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
            weights, weights_key = cfg.train.init_checkpoint, "train.init_checkpoint"
            names = cfg.dataloader.test.dataset.names
            names = [names] if isinstance(names, str) else list(names)
        else:
            cfg = yacs_config(args)
            weights, weights_key, names = cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", list(cfg.DATASETS.TEST)
    except (KeyError, ValueError, AttributeError, AssertionError) as error:  # yacs / omegaconf name the key
        cli.fail(f"--config-file {args.config_file} with {' '.join(args.opts) or 'no overrides'}: "
                 f"{type(error).__name__}: {error}")
    if not weights:
        cli.fail(f"{weights_key} is empty: the model would be evaluated with random weights; "
                 f"pass {weights_key}{' ' if weights_key.isupper() else '='}PATH")
    if str(weights).startswith(_REMOTE_WEIGHTS):
        from detectron2.utils.file_io import PathManager

        try:  # fetched once here, into Detectron2's cache, before any process or model exists
            PathManager.get_local_path(weights)
        except OSError as error:  # urllib's URLError and HTTPError are OSErrors
            cli.fail(f"{weights_key} {weights}: cannot download it ({error}); put the file on this machine and "
                     f"pass its path", status=cli.EXIT_CANNOT_RUN)
    else:
        cli.require_files({weights_key: weights})
        problem = not_a_checkpoint(weights)
        if problem:
            cli.fail(f"{weights_key} {weights}: {problem}")
    if not names:
        cli.fail("the config names no test set (DATASETS.TEST / dataloader.test.dataset.names)")
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            cli.fail(f"test set {name!r} is not registered: register a COCO-format set with --register {name} JSON "
                     "IMAGE_ROOT, or import the module that registers it (--add-config)")


def yacs_config(args: argparse.Namespace):
    """The yacs config the command line describes (project config functions, file, overlays, overrides)."""
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
    return cfg


def setup_yacs(args: argparse.Namespace):
    cfg = yacs_config(args)
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
    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    import refine_hooks.detectron2  # noqa: F401 (registers RefinedMetaArch)

    setup_logger(name="refine_hooks")
    setup_logger(name="detectron2")
    for name, json_file, image_root in args.register:
        if name not in DatasetCatalog.list():  # check_config registered them already in the launching process
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
        cli.fail("tools/detectron2_test.py needs Detectron2, which is not on PyPI; see README, 'Detectron2'")
    check_command_line(args)
    check_config(args)  # before any process starts or any model is built
    if args.num_gpus <= 1:
        evaluate(args)
    else:
        launch(evaluate, args.num_gpus, dist_url=args.dist_url, args=(args,))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(cli.run(main))
