"""Mask2Former (facebookresearch/Mask2Former under Detectron2) refined with configs/detectron2/mask2former_samrefiner.yaml.

Mask2Former's own ``MaskFormer`` meta-architecture, built from its own instance-segmentation config
(``maskformer2_R50_bs16_50ep.yaml``: R50, MSDeformAttn pixel decoder, masked-attention decoder) with random
weights, on CPU, shrunk only in input size and number of queries. On CPU its deformable attention runs
Mask2Former's pure-PyTorch ``ms_deform_attn_core_pytorch`` (tools/install_detectron2.sh, docs/detectron2.md).

Skipped without Detectron2 and Mask2Former (tools/install_detectron2.sh), failed instead when
REFINE_HOOKS_REQUIRE names detectron2 (CI).
"""

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from frameworks import import_framework

mask2former = import_framework("detectron2", "mask2former", "detectron2", "detectron2._C")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.projects.deeplab import add_deeplab_config  # noqa: E402
from mask2former import MaskFormer, add_maskformer2_config  # noqa: E402
from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn  # noqa: E402
from mask2former.modeling.pixel_decoder.ops.modules import ms_deform_attn as ms_deform_attn_module  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from refine_hooks.data.images import load_image  # noqa: E402
from refine_hooks.data.masks import rle_encode  # noqa: E402
from refine_hooks.detectron2 import COCOBoundaryEvaluator, add_refiner_config  # noqa: E402
from refine_hooks.detectron2.evaluation import RESULTS_FILE  # noqa: E402
from refine_hooks.evaluation import evaluate_coco  # noqa: E402
from refine_hooks.refiners import build_refiner  # noqa: E402
from refine_hooks.refiners.detections import boxes_from_masks  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASK2FORMER_TREE = os.path.dirname(os.path.dirname(os.path.abspath(mask2former.__file__)))
MASK2FORMER_CONFIG = os.path.join(MASK2FORMER_TREE, "configs", "coco", "instance-segmentation",
                                  "maskformer2_R50_bs16_50ep.yaml")
REFINER_OVERLAY = os.path.join(REPO, "configs", "detectron2", "mask2former_samrefiner.yaml")
ITERATIONS = 2
DETECTIONS = 6
# Mask2Former's config and add-config functions, in the order its train_net.py calls them.
ADD_CONFIG = ("detectron2.projects.deeplab:add_deeplab_config", "mask2former:add_maskformer2_config")


def cpu_overrides(dataset_name, sam_checkpoint, weights=""):
    """KEY VALUE pairs that shrink the config for CPU and use the tiny random SAM (strings, as on a command line)."""
    return ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights,
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "12",
            "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS), "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
            "DATASETS.TEST", f"('{dataset_name}',)", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.REFINER.MODEL_TYPE", "tiny", "MODEL.REFINER.CHECKPOINT", sam_checkpoint,
            "MODEL.REFINER.KEEP_UNREFINED", "True", "MODEL.REFINER.SAMREFINER.ITERATIONS", str(ITERATIONS)]


def mask2former_cfg(dataset_name, sam_checkpoint):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_refiner_config(cfg)
    cfg.merge_from_file(MASK2FORMER_CONFIG)
    cfg.merge_from_file(REFINER_OVERLAY)
    cfg.merge_from_list(cpu_overrides(dataset_name, sam_checkpoint))
    return cfg


@pytest.fixture(scope="module")
def maskformer(dataset, sam_checkpoint, tmp_path_factory):
    """The refined MaskFormer with random weights, its config, and its weights saved as a checkpoint."""
    name, _ = dataset
    cfg = mask2former_cfg(name, sam_checkpoint)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    directory = str(tmp_path_factory.mktemp("m2f_ckpt"))
    DetectionCheckpointer(model, save_dir=directory).save("maskformer")
    return model, cfg, os.path.join(directory, "maskformer.pth")


@pytest.fixture(scope="module")
def predictions(dataset, maskformer):
    """The refined model's outputs on the dataset's test inputs, and how often Mask2Former's pure-PyTorch
    deformable attention ran for them: ``(inputs, outputs, calls)``."""
    name, _ = dataset
    model, cfg, _ = maskformer
    mapper = DatasetMapper(cfg, is_train=False)
    inputs = [mapper(copy.deepcopy(record)) for record in DatasetCatalog.get(name)]
    original = ms_deform_attn_module.ms_deform_attn_core_pytorch
    calls = []

    def counted(*args, **kwargs):  # Mask2Former's function, counted
        calls.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(ms_deform_attn_module, "ms_deform_attn_core_pytorch", counted)
        outputs = model(inputs)
    return inputs, outputs, len(calls)


def test_mask2former_config_builds_its_maskformer_with_refinement(maskformer):
    model, cfg, _ = maskformer
    assert isinstance(model, MaskFormer) and type(model).__name__ == "RefinedMaskFormer"
    assert cfg.MODEL.META_ARCHITECTURE == "RefinedMetaArch" and cfg.MODEL.REFINER.BASE_META_ARCHITECTURE == "MaskFormer"
    assert cfg.MODEL.REFINER.MODEL_TYPE == "tiny"  # the overlay's vit_h, overridden for the test
    # Mask2Former's own architecture from its config: deformable-attention pixel decoder, 9 masked-attention layers.
    assert sum(isinstance(m, MSDeformAttn) for m in model.modules()) == cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6
    assert model.sem_seg_head.predictor.num_layers == 9 and model.num_queries == 12
    assert model.instance_on and not model.panoptic_on and not model.semantic_on
    assert not any("image_encoder" in key for key in model.state_dict())  # SAM stays out of the checkpoint


def test_refined_masks_are_the_refiners_masks_for_the_models_masks(dataset, sam_checkpoint, predictions):
    inputs, outputs, attention_calls = predictions
    assert attention_calls > 0  # on CPU, Mask2Former's own pure-PyTorch attention ran
    refiner = build_refiner(dict(type="SAMRefiner", model_type="tiny", checkpoint=sam_checkpoint, iterations=ITERATIONS))
    refined_rows = changed_rows = 0
    for record, output in zip(inputs, outputs):
        instances = output["instances"]
        coarse = instances.unrefined_masks  # what MaskFormer.instance_inference returned: float 0/1
        assert len(instances) == DETECTIONS and coarse.shape == (DETECTIONS, record["height"], record["width"])
        assert coarse.dtype == torch.float32 and set(coarse.unique().tolist()) <= {0.0, 1.0}
        expected = refiner.refine(load_image(record["file_name"]), coarse.numpy() > 0.5)
        assert np.array_equal(instances.refined.numpy(), expected.refined)
        assert instances.pred_masks.dtype == torch.float32  # the detector's own format
        assert np.array_equal(instances.pred_masks.numpy(),
                              np.where(expected.refined[:, None, None], expected.masks, coarse.numpy()))
        refined = expected.refined
        assert np.allclose(instances.refine_iou.numpy()[refined], expected.iou_predictions[refined])
        # Mask2Former's boxes are all zero: refined detections get their refined mask's box.
        assert np.array_equal(instances.pred_boxes.tensor.numpy()[refined], boxes_from_masks(expected.masks[refined]))
        assert not instances.pred_boxes.tensor[torch.from_numpy(~refined)].any()
        refined_rows += int(refined.sum())
        changed_rows += int((instances.pred_masks != coarse).flatten(1).any(1).sum())
    assert refined_rows > 0 and changed_rows > 0


def test_inference_on_dataset_reports_mask_and_boundary_ap_of_the_refined_masks(dataset, maskformer, predictions,
                                                                                 tmp_path):
    name, json_file = dataset
    model, cfg, _ = maskformer
    inputs, outputs, _ = predictions
    evaluator = COCOBoundaryEvaluator(name, ("segm", "boundary"), output_dir=str(tmp_path), distributed=False)
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
    assert set(results) == {"segm", "boundary"}
    with open(tmp_path / RESULTS_FILE) as f:
        written = json.load(f)
    # What was evaluated is the refined masks, every detection of every image.
    expected = sorted((record["image_id"], rle_encode(mask)["counts"])
                      for record, output in zip(inputs, outputs)
                      for mask in output["instances"].pred_masks.numpy() > 0.5)
    assert sorted((r["image_id"], r["segmentation"]["counts"]) for r in written) == expected
    core = evaluate_coco(json_file, written, ("segm", "boundary"), progress=False)
    for iou_type in ("segm", "boundary"):
        for metric in ("AP", "AP50", "AP75"):
            assert 0.0 <= results[iou_type][metric] <= 100.0
            assert results[iou_type][metric] == pytest.approx(core[f"{iou_type}/{metric}"] * 100, abs=1e-9)
        assert {"AP-box", "AP-ellipse"} <= set(results[iou_type])

    # Random weights score about 0 against the shapes; against ground truth made of the refined masks
    # themselves, the evaluator must report a perfect mask AP and Boundary AP.
    with open(json_file) as f:
        gt = json.load(f)
    assert all(mask_utils.area(r["segmentation"]) > 0 for r in written)
    gt["annotations"] = [dict(r, id=i + 1, area=float(mask_utils.area(r["segmentation"])), iscrowd=0)
                         for i, r in enumerate(written)]
    own_gt = tmp_path / "refined_as_ground_truth.json"
    own_gt.write_text(json.dumps(gt))
    own_name = f"{name}_refined_as_gt"
    register_coco_instances(own_name, {}, str(own_gt), MetadataCatalog.get(name).image_root)
    try:
        perfect = inference_on_dataset(model, build_detection_test_loader(cfg, own_name),
                                       COCOBoundaryEvaluator(own_name, ("segm", "boundary"), distributed=False))
    finally:
        DatasetCatalog.remove(own_name)
        MetadataCatalog.remove(own_name)
    assert perfect["segm"]["AP"] == pytest.approx(100.0) and perfect["boundary"]["AP"] == pytest.approx(100.0)


def test_detectron2_test_tool_on_the_mask2former_config(dataset, sam_checkpoint, maskformer, tmp_path):
    """tools/detectron2_test.py as docs/detectron2.md shows it for Mask2Former, with a plain MaskFormer
    checkpoint: the same AP and Boundary AP as the refined model in this process."""
    name, json_file = dataset
    model, cfg, weights = maskformer
    in_process = inference_on_dataset(model, build_detection_test_loader(cfg, name),
                                      COCOBoundaryEvaluator(name, distributed=False))
    command = [sys.executable, os.path.join(REPO, "tools", "detectron2_test.py")]
    for function in ADD_CONFIG:
        command += ["--add-config", function]
    command += ["--config-file", MASK2FORMER_CONFIG, "--refiner-config", REFINER_OVERLAY,
                "--register", "m2f_cli_set", json_file, os.path.join(os.path.dirname(json_file), "images"),
                "--output", str(tmp_path)]
    command += cpu_overrides("m2f_cli_set", sam_checkpoint, weights)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "m2f_cli_set segm: AP" in done.stdout and "m2f_cli_set boundary: AP" in done.stdout
    with open(tmp_path / "evaluation.json") as f:
        summary = json.load(f)
    refined = re.match(r"refined (\d+) of (\d+) detections", summary["refinement"])
    assert refined and 0 < int(refined.group(1)) <= int(refined.group(2)) == 3 * DETECTIONS
    for iou_type in ("segm", "boundary"):
        for metric in ("AP", "AP50", "AP75"):
            assert summary["results"]["m2f_cli_set"][iou_type][metric] == pytest.approx(in_process[iou_type][metric],
                                                                                       abs=1e-9)
    with open(tmp_path / "m2f_cli_set" / RESULTS_FILE) as f:
        assert len(json.load(f)) == 3 * DETECTIONS
