"""Run one self-training round with PseudoLabelRefineHook under Detectron2's ``launch`` (DDP, gloo on CPU).

    python d2_ddp_worker.py SPEC.json   # spec: processes, labeled/unlabeled sets, weights, SAM, out_dir
"""

import json
import os
import sys

import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer, launch
from detectron2.modeling import build_model
from detectron2.utils import comm

from refine_hooks.detectron2 import PseudoLabelRefineHook, add_refiner_config


def main(spec):
    register_coco_instances("ddp_labeled", {}, spec["labeled_json"], spec["labeled_images"])
    register_coco_instances("ddp_unlabeled", {}, spec["unlabeled_json"], spec["unlabeled_images"])
    cfg = get_cfg()
    add_refiner_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 160
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 160
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.DATASETS.TRAIN = ("ddp_labeled",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg)
    DetectionCheckpointer(model).load(spec["weights"])
    if comm.get_world_size() > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), torch.optim.SGD(model.parameters(), lr=0.0))
    refiner = dict(type="SAMRefiner", model_type="tiny", checkpoint=spec["sam_checkpoint"], iterations=spec["iterations"])
    hook = PseudoLabelRefineHook(cfg, "ddp_unlabeled", spec["out_dir"], refiner, score_thr=0.3)
    trainer.register_hooks([hook])
    trainer.train(0, 1)
    with open(os.path.join(spec["out_dir"], f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"images_refined_here": hook.last_summary.images_done_this_run}, f)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    launch(main, spec["processes"], dist_url="auto", args=(spec,))
    sys.exit(0 if os.path.isfile(os.path.join(spec["out_dir"], "final", "pseudo_refined.json")) else 1)
