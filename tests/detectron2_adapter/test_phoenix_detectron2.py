"""A trained refiner (Phoenix checkpoint from the real trainer) after a real Detectron2 Mask R-CNN,
configured with ``MODEL.REFINER.TYPE: Phoenix`` and ``MODEL.REFINER.REFINER_CHECKPOINT``."""

import copy
import os

import numpy as np
import torch

from frameworks import import_framework

import_framework("detectron2", "detectron2", "detectron2._C")

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from refine_hooks.data.images import load_image  # noqa: E402
from refine_hooks.detectron2 import add_refiner_config  # noqa: E402
from refine_hooks.refiners import build_refiner  # noqa: E402
from tiny_coco import make_tiny_coco  # noqa: E402
from tiny_refiner import train_tiny_refiner, with_task_prompt  # noqa: E402


def test_refined_meta_arch_runs_a_phoenix_checkpoint(tmp_path):
    root = str(tmp_path / "data")
    json_file = make_tiny_coco(root, num_images=2, seed=0)
    name = f"refine_hooks_phoenix_{os.getpid()}"
    register_coco_instances(name, {}, json_file, os.path.join(root, "images"))
    # with SUM's task prompt (MODEL.REFINER.PHOENIX.TASK picks its row)
    checkpoint = with_task_prompt(train_tiny_refiner(str(tmp_path / "refiner")), str(tmp_path / "task.pth"))
    try:
        cfg = get_cfg()
        add_refiner_config(cfg)
        cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
        cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.TEST.DETECTIONS_PER_IMAGE = 4
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 160
        cfg.INPUT.MASK_FORMAT = "bitmask"
        cfg.MODEL.META_ARCHITECTURE = "RefinedMetaArch"
        cfg.MODEL.REFINER.TYPE = "Phoenix"
        cfg.MODEL.REFINER.MODEL_TYPE = "tiny"
        cfg.MODEL.REFINER.REFINER_CHECKPOINT = checkpoint
        cfg.MODEL.REFINER.PHOENIX.ITERATIONS = 2
        assert cfg.MODEL.REFINER.PHOENIX.TASK == "default"
        cfg.MODEL.REFINER.PHOENIX.TASK = "salient_object"
        cfg.MODEL.REFINER.KEEP_UNREFINED = True
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        for layer in (model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.cls_score,
                      model.roi_heads.box_predictor.bbox_pred):  # random weights: every anchor a detection
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        mapper = DatasetMapper(cfg, is_train=False)
        inputs = [mapper(copy.deepcopy(record)) for record in DatasetCatalog.get(name)]
        with torch.no_grad():
            outputs = model(inputs)
        refiner = build_refiner(dict(type="Phoenix", model_type="tiny", refiner_checkpoint=checkpoint, iterations=2,
                                     task="salient_object"))
        other = build_refiner(dict(type="Phoenix", model_type="tiny", refiner_checkpoint=checkpoint, iterations=2))
        differs = False
        for record, output in zip(inputs, outputs):
            instances = output["instances"]
            assert len(instances) > 0 and bool(instances.refined.any())
            expected = refiner.refine(load_image(record["file_name"]), instances.unrefined_masks.numpy())
            np.testing.assert_array_equal(instances.pred_masks.numpy(), expected.masks)
            entity = other.refine(load_image(record["file_name"]), instances.unrefined_masks.numpy())
            differs |= not np.array_equal(entity.masks, expected.masks)
        assert differs  # the task the config names is the one used
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
