"""Uncertainty-aware training in Detectron2 with real Detectron2 on CPU: the mask head's loss against
Detectron2's own, a next-round Mask R-CNN trained on a sidecar written by the real pseudo-label job (the
certainty reaching its loss checked against a direct computation, flips included), the pseudo-label hook
keeping the detector's probabilities, and errors for sidecars that do not fit."""

import copy
import json
import os

import numpy as np
import pytest
import torch
import torchvision

detectron2 = pytest.importorskip("detectron2")

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from refine_hooks.data.masks import segmentation_to_mask  # noqa: E402
from refine_hooks.detectron2 import (PseudoLabelRefineHook, UncertaintyDatasetMapper, add_uncertainty_config,  # noqa: E402
                                     register_coco_instances_with_uncertainty)
from refine_hooks.detectron2 import uncertainty as d2_uncertainty  # noqa: E402
from refine_hooks.uncertainty import MapFile, MapFileError, certainty_from_levels, uncertainty_path  # noqa: E402
from tiny_coco import make_tiny_coco, write_other_annotation_file, write_refined_round, write_resized_sidecar  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAY = os.path.join(REPO, "configs", "detectron2", "uncertainty.yaml")


@pytest.fixture(scope="module")
def refined_round(tmp_path_factory):
    """A refined pseudo-label file with its sidecar, written by the real job (tiny random SAM) from the tiny
    COCO set's masks, registered with its sidecar: ``(name, root, refined json)``."""
    root = str(tmp_path_factory.mktemp("d2_ua_round"))
    refined = write_refined_round(root)
    name = f"refine_hooks_ua_{os.getpid()}"
    register_coco_instances_with_uncertainty(name, {}, refined, os.path.join(root, "images"))
    yield name, root, refined
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def make_cfg(dataset_name):
    cfg = get_cfg()
    add_uncertainty_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_file(OVERLAY)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.INPUT.MIN_SIZE_TRAIN = (192,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 160
    return cfg


def _instances(levels_value):
    masks = torch.zeros(3, 40, 50, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 20:38, 10:45] = True
    instances = Instances((40, 50))
    instances.proposal_boxes = Boxes(torch.tensor([[4.0, 4.0, 31.0, 21.0], [8.0, 18.0, 46.0, 39.0], [0.0, 0.0, 25.0, 25.0]]))
    instances.gt_classes = torch.tensor([0, 1, 0])
    instances.gt_masks = BitMasks(masks)
    instances.gt_uncertainty = torch.full((3, 40, 50), levels_value, dtype=torch.uint8)
    return instances


def test_mask_loss_with_certainty_one_is_detectron2s_and_certainty_zero_trains_nothing():
    logits = torch.randn(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
    with EventStorage():
        plain = mask_rcnn_loss(logits, [_instances(0)])
        ours = d2_uncertainty.uncertainty_aware_mask_rcnn_loss(logits, [_instances(0)])
        assert torch.equal(ours, plain)
        without_field = _instances(0)
        without_field.remove("gt_uncertainty")
        assert torch.equal(d2_uncertainty.uncertainty_aware_mask_rcnn_loss(logits, [without_field]), plain)
        leaf = logits.clone().requires_grad_()
        nothing = d2_uncertainty.uncertainty_aware_mask_rcnn_loss(leaf, [_instances(255)])
        nothing.backward()
        assert nothing == 0 and torch.count_nonzero(leaf.grad) == 0


def test_next_round_mask_rcnn_trains_with_the_roi_aligned_certainty(refined_round, monkeypatch):
    name, root, refined = refined_round
    cfg = make_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.roi_heads.mask_head
    assert type(head).__name__ == "UncertaintyAwareMaskRCNNConvUpsampleHead"
    for layer in (model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.cls_score,
                  model.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)  # proposals = anchors, so foreground RoIs exist with random weights
        torch.nn.init.zeros_(layer.bias)
    mapper = UncertaintyDatasetMapper(cfg, is_train=True,
                                      augmentations=[T.ResizeShortestEdge(192, 256), T.RandomFlip(prob=1.0, horizontal=True)])
    loader = build_detection_train_loader(cfg, mapper=mapper)
    seen = []
    aligned = d2_uncertainty.aligned_certainty

    def spy(instances, side):
        out = aligned(instances, side)
        seen.append((instances, out))
        return out

    monkeypatch.setattr(d2_uncertainty, "aligned_certainty", spy)
    before = copy.deepcopy(head.state_dict())
    # (random ResNet features are huge: a small step keeps three iterations finite)
    trainer = SimpleTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=1e-7))
    trainer.train(0, 3)
    assert seen and any(not torch.equal(a, b) for a, b in zip(before.values(), head.state_dict().values()))

    # one image's positive RoIs, computed directly: the sidecar map at the image size -> 2x nearest -> flip
    # -> torchvision's RoIAlign (aligned, adaptive sampling) with the proposal box
    with open(refined) as f:
        coco = json.load(f)
    maps = MapFile(uncertainty_path(refined))
    images = {i["id"]: i for i in coco["images"]}
    moved_masks, moved_certainty = [], []
    for annotation in coco["annotations"]:
        if not isinstance(annotation["segmentation"], dict):
            continue  # polygons are rasterised after the transform, not transformed as bitmaps
        image = images[annotation["image_id"]]
        height, width = image["height"], image["width"]
        mask = segmentation_to_mask(annotation["segmentation"], height, width)
        certainty = np.ones((height, width), np.float32)
        if annotation["id"] in maps:
            levels = maps.levels(annotation["id"])
            x1, y1, x2, y2 = levels.box
            certainty[y1:y2 + 1, x1:x2 + 1] = certainty_from_levels(levels.values)
        moved_masks.append(torch.from_numpy(np.repeat(np.repeat(mask, 2, 0), 2, 1)[:, ::-1].copy()))
        moved_certainty.append(np.ascontiguousarray(np.repeat(np.repeat(certainty, 2, 0), 2, 1)[:, ::-1]))
    checked = 0
    for instances, certainty in seen[:2]:
        for row in range(len(instances)):
            gt = instances.gt_masks.tensor[row]
            matches = [k for k, m in enumerate(moved_masks) if m.shape == gt.shape and torch.equal(m, gt)]
            if len(matches) != 1:
                continue
            box = instances.proposal_boxes.tensor[row].detach()
            expected = torchvision.ops.roi_align(torch.from_numpy(1 - moved_certainty[matches[0]])[None, None], [box[None]],
                                                 28, 1.0, 0, True)[0, 0]
            torch.testing.assert_close(certainty[row], 1 - expected, atol=2e-5, rtol=0)
            checked += 1
    assert checked > 0 and any((c < 0.99).any() for _, c in seen)


def test_sidecars_that_do_not_fit_are_named(refined_round, tmp_path):
    name, root, refined = refined_round
    images = os.path.join(root, "images")
    other_path = write_other_annotation_file(refined, str(tmp_path / "other.json"))
    resized = str(tmp_path / "resized.bin")
    key, (height, width) = write_resized_sidecar(refined, resized)
    cases = {
        "other": (other_path, uncertainty_path(refined), MapFileError, "other.json does not have .*another annotation file"),
        "resized": (refined, resized, MapFileError, f"annotation id {key} .*{height}x{width} image"),
        "missing": (refined, str(tmp_path / "missing.bin"), FileNotFoundError, "missing.bin of .*pseudo_refined.json does not exist"),
    }
    for case, (json_file, sidecar, error, message) in cases.items():
        dataset = f"{name}_{case}"
        register_coco_instances_with_uncertainty(dataset, {}, json_file, images, uncertainty_file=sidecar)
        try:
            with pytest.raises(error, match=message):
                DatasetCatalog.get(dataset)
        finally:
            DatasetCatalog.remove(dataset)
            MetadataCatalog.remove(dataset)
    # a dataset registered without a sidecar, under a config that asks for one
    plain = f"{name}_plain"
    register_coco_instances(plain, {}, refined, images)
    try:
        cfg = make_cfg(plain)
        mapper = UncertaintyDatasetMapper(cfg, is_train=True)
        record = DatasetCatalog.get(plain)[0]
        with pytest.raises(KeyError, match="has no uncertainty sidecar; register it with register_coco_instances_with_uncertainty"):
            mapper(copy.deepcopy(record))
        cfg.INPUT.UNCERTAINTY.REQUIRED = False
        out = UncertaintyDatasetMapper(cfg, is_train=True)(copy.deepcopy(record))
        assert not out["instances"].gt_uncertainty.any()
    finally:
        DatasetCatalog.remove(plain)
        MetadataCatalog.remove(plain)


def test_pseudo_label_hook_keeps_the_detectors_probabilities(tmp_path_factory, tmp_path):
    root = str(tmp_path_factory.mktemp("d2_ua_unlabeled"))
    info = make_tiny_coco(root, num_images=2, seed=1, prefix="unl", with_annotations=False)
    unlabeled = f"refine_hooks_ua_unlabeled_{os.getpid()}"
    register_coco_instances(unlabeled, {}, info, os.path.join(root, "images"))
    labeled_root = str(tmp_path_factory.mktemp("d2_ua_labeled"))
    labeled = f"refine_hooks_ua_labeled_{os.getpid()}"
    register_coco_instances(labeled, {}, make_tiny_coco(labeled_root, num_images=2, seed=0), os.path.join(labeled_root, "images"))
    cfg = make_cfg(labeled)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 6
    torch.manual_seed(0)
    model = build_model(cfg)
    for layer in (model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.cls_score,
                  model.roi_heads.box_predictor.bbox_pred):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg, mapper=UncertaintyDatasetMapper(cfg, True)),
                            torch.optim.SGD(model.parameters(), lr=0.0))
    refiner = dict(type="SAMRefiner", model_type="tiny", iterations=2)
    outputs = {}
    try:
        for uncertainty in (False, True):
            hook = PseudoLabelRefineHook(cfg, unlabeled, str(tmp_path / f"u{int(uncertainty)}"), refiner, score_thr=0.3,
                                         uncertainty=uncertainty)
            hook.trainer = trainer
            outputs[uncertainty] = (hook.make_round("final"), hook.last_output)
        plain_coarse = tmp_path / "u0" / "final" / "pseudo_coarse.json"
        coarse_path = tmp_path / "u1" / "final" / "pseudo_coarse.json"
        assert plain_coarse.read_text() == coarse_path.read_text()  # keeping probabilities changes no coarse mask
        coarse = json.loads(coarse_path.read_text())
        assert coarse["annotations"]
        probabilities = MapFile(str(tmp_path / "u1" / "final" / "pseudo_coarse.probabilities.bin"), kind="coarse_probability")
        sizes = {i["id"]: (i["height"], i["width"]) for i in coarse["images"]}
        for annotation in coarse["annotations"]:
            mask = segmentation_to_mask(annotation["segmentation"], *sizes[annotation["image_id"]])
            full = probabilities.levels(annotation["id"]).full(*mask.shape)
            # Detectron2's soft masks are floor(255 p), its masks p >= 0.5
            assert (full[~mask] <= 127).all() and (full[mask] >= 127).all()
        name, refined = outputs[True]
        assert MapFile(uncertainty_path(refined)).header["uncertainty"]["coarse"]["source"] == "detector_probabilities"
        assert MetadataCatalog.get(name).uncertainty_file == uncertainty_path(refined)
        assert all("uncertainty_file" in record for record in DatasetCatalog.get(name))
    finally:
        for dataset in (unlabeled, labeled, *(n for n, _ in outputs.values())):
            if dataset in DatasetCatalog.list():
                DatasetCatalog.remove(dataset)
                MetadataCatalog.remove(dataset)
