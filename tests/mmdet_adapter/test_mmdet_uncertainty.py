"""Uncertainty-aware training in MMDetection with real mmdet pieces on CPU: the losses against mmdet's own,
the maps through mmdet's transforms, a next-round Mask R-CNN trained on a sidecar written by the real
pseudo-label job (the certainty reaching its loss checked against a direct computation), the Mask2Former
head, the pseudo-label hook, and the errors for sidecars that do not fit."""

import copy
import importlib.util
import json
import os

import numpy as np
import pytest

if importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmcv") is None:
    pytest.skip("mmdet / mmcv not installed (bash tools/install_mmdet.sh)", allow_module_level=True)

import torch  # noqa: E402
import torchvision  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401  (registers)
from mmdet.models.losses import CrossEntropyLoss, DiceLoss, FocalLoss  # noqa: E402
from mmdet.registry import DATASETS, MODELS, TRANSFORMS  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from refine_hooks.data.masks import segmentation_to_mask  # noqa: E402
from refine_hooks.mmdet.uncertainty import (BitmapMasksWithUncertainty, UncertaintyAwareCrossEntropyLoss,  # noqa: E402
                                            UncertaintyAwareDiceLoss, UncertaintyAwareFocalLoss)
from refine_hooks.uncertainty import MapFile, MapFileError, certainty_from_levels, uncertainty_path  # noqa: E402
from refine_hooks.data.windows import WindowedMap  # noqa: E402

from mmdet_test_utils import CLASSES, CONFIGS, SEEDED, TINY_REFINER, dataloader, runner_config, small_model  # noqa: E402
from tiny_coco import write_other_annotation_file, write_refined_round, write_resized_sidecar  # noqa: E402

UA_MASK_RCNN = os.path.join(CONFIGS, "uncertainty", "mask-rcnn_r50_fpn_1x_coco_uncertainty.py")
UA_MASK2FORMER = os.path.join(CONFIGS, "uncertainty", "mask2former_r50_8xb2-lsj-50e_coco_uncertainty.py")
register_all_modules(init_default_scope=True)  # pipelines built outside a Runner (as when a test runs alone)


@pytest.fixture(scope="module")
def refined_round(tmp_path_factory):
    """A refined pseudo-label file and its sidecar, written by the real job (tiny random SAM) from the
    tiny COCO set's masks: ``(root, refined json)``."""
    root = str(tmp_path_factory.mktemp("ua_round"))
    refined = write_refined_round(root)
    assert len(MapFile(uncertainty_path(refined))) > 0
    return root, refined


# ---------------------------------------------------------------------------------------------- losses
def _mask_inputs(seed=0, n=5, classes=3, side=28):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, classes, side, side, generator=g) * 3, (torch.rand(n, side, side, generator=g) > 0.5).float(),
            torch.randint(0, classes, (n,), generator=g), torch.rand(n, side, side, generator=g))


def test_certainty_one_gives_mmdets_own_loss_values_exactly():
    preds, targets, labels, _ = _mask_inputs()
    ones = torch.ones_like(targets)
    plain = CrossEntropyLoss(use_mask=True, loss_weight=1.0)
    ours = UncertaintyAwareCrossEntropyLoss(use_mask=True, loss_weight=1.0)
    assert torch.equal(ours(preds, targets, labels, certainty=ones), plain(preds, targets, labels))
    assert torch.equal(ours(preds, targets, labels), plain(preds, targets, labels))

    points, point_targets = preds[:, 0].flatten(1), targets.flatten(1)  # Mask2Former-style: N x P points
    ones = torch.ones_like(points)
    plain = CrossEntropyLoss(use_sigmoid=True, reduction="mean", loss_weight=5.0)
    ours = UncertaintyAwareCrossEntropyLoss(use_sigmoid=True, reduction="mean", loss_weight=5.0)
    assert torch.equal(ours(points.reshape(-1), point_targets.reshape(-1), avg_factor=points.numel(), certainty=ones.reshape(-1)),
                       plain(points.reshape(-1), point_targets.reshape(-1), avg_factor=points.numel()))
    kwargs = dict(use_sigmoid=True, activate=True, reduction="mean", naive_dice=True, eps=1.0, loss_weight=5.0)
    assert torch.equal(UncertaintyAwareDiceLoss(**kwargs)(points, point_targets, avg_factor=5, certainty=ones),
                       DiceLoss(**kwargs)(points, point_targets, avg_factor=5))
    assert torch.equal(UncertaintyAwareFocalLoss(use_sigmoid=True, loss_weight=20.0)(points, point_targets, avg_factor=points.numel(),
                                                                                     certainty=ones),
                       FocalLoss(use_sigmoid=True, loss_weight=20.0)(points, point_targets, avg_factor=points.numel()))


@pytest.mark.parametrize("kind", ["mask", "sigmoid", "dice", "focal"])
def test_certainty_zero_pixels_contribute_nothing(kind):
    preds, targets, labels, certainty = _mask_inputs()
    certainty[:, :, :10] = 0.0
    certainty[:, :, 10:] = certainty[:, :, 10:].clamp(min=0.7)
    if kind == "mask":
        loss = UncertaintyAwareCrossEntropyLoss(use_mask=True)
        call = lambda p, t: loss(p, t, labels, certainty=certainty)  # noqa: E731
        uncertain = (slice(None), slice(None), slice(None), slice(0, 10))
    else:
        loss = {"sigmoid": UncertaintyAwareCrossEntropyLoss(use_sigmoid=True), "focal": UncertaintyAwareFocalLoss(use_sigmoid=True),
                "dice": UncertaintyAwareDiceLoss(use_sigmoid=True, naive_dice=True, eps=1.0)}[kind]
        preds = preds[:, 0]
        call = lambda p, t: loss(p, t, certainty=certainty)  # noqa: E731
        uncertain = (slice(None), slice(None), slice(0, 10))
    changed_preds, changed_targets = preds.clone(), targets.clone()
    changed_preds[uncertain] = torch.randn_like(changed_preds[uncertain]) * 10
    changed_targets[..., :10] = 1 - changed_targets[..., :10]
    assert torch.allclose(call(preds, targets), call(changed_preds, changed_targets), rtol=1e-6, atol=0)
    leaf = preds.clone().requires_grad_()
    call(leaf, targets).backward()
    assert torch.count_nonzero(leaf.grad[uncertain]) == 0 and torch.count_nonzero(leaf.grad) > 0


def test_fcn_mask_head_with_certainty_one_is_the_stock_head():
    from mmdet.models.task_modules.samplers import SamplingResult  # noqa: F401  (the real class is used below)

    torch.manual_seed(0)
    plain = MODELS.build(dict(type="FCNMaskHead", num_convs=1, in_channels=8, conv_out_channels=8, num_classes=2,
                              loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0)))
    ours = MODELS.build(dict(type="UncertaintyAwareFCNMaskHead", num_convs=1, in_channels=8, conv_out_channels=8, num_classes=2,
                             loss_mask=dict(type="UncertaintyAwareCrossEntropyLoss", use_mask=True, loss_weight=1.0)))
    ours.load_state_dict(plain.state_dict())
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 5:20, 5:30] = 1
    masks[1, 20:38, 10:45] = 1
    sampling = _sampling_result(torch.tensor([[4.0, 4.0, 31.0, 21.0], [8.0, 18.0, 46.0, 39.0], [0.0, 0.0, 25.0, 25.0]]),
                                torch.tensor([0, 1, 0]), torch.tensor([0, 1]))
    preds = torch.randn(3, 2, 28, 28)
    cfg = Config(dict(mask_size=28))
    stock = plain.loss_and_target(preds, [sampling], [InstanceData(masks=BitmapMasks(masks, 40, 50))], cfg)
    certain = ours.loss_and_target(preds, [sampling], [InstanceData(masks=BitmapMasksWithUncertainty(masks, 40, 50))], cfg)
    assert torch.equal(stock["loss_mask"]["loss_mask"], certain["loss_mask"]["loss_mask"])
    assert torch.equal(stock["mask_targets"], certain["mask_targets"])
    with pytest.raises(TypeError, match="UncertaintyAwareCrossEntropyLoss"):
        MODELS.build(dict(type="UncertaintyAwareFCNMaskHead", num_classes=2,
                          loss_mask=dict(type="CrossEntropyLoss", use_mask=True)))


def _sampling_result(boxes, assigned, labels):
    from mmdet.models.task_modules.assigners import AssignResult
    from mmdet.models.task_modules.samplers import SamplingResult

    gt_inds = assigned + 1
    assign = AssignResult(len(labels), gt_inds, torch.ones(len(boxes)), labels=labels[assigned])
    return SamplingResult(pos_inds=torch.arange(len(boxes)), neg_inds=torch.tensor([], dtype=torch.long), priors=boxes,
                          gt_bboxes=torch.zeros(len(labels), 4), assign_result=assign, gt_flags=torch.zeros(len(boxes), dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- geometry
def test_maps_follow_mmdets_transforms():
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 30, 40)) > 0.5).astype(np.uint8)
    levels = rng.integers(0, 256, size=(3, 30, 40), dtype=np.uint8)
    both = BitmapMasksWithUncertainty(masks, 30, 40, levels)
    as_masks = BitmapMasks(levels, 30, 40)
    operations = [
        lambda m: m.rescale(2.0), lambda m: m.resize((45, 50)), lambda m: m.flip("horizontal"), lambda m: m.flip("vertical"),
        lambda m: m.crop(np.array([3, 4, 30, 25])), lambda m: m[np.array([2, 0])], lambda m: m[np.array([True, False, True])],
        lambda m: m.translate((30, 40), 5, "horizontal"), lambda m: m.rotate((30, 40), 15.0),
        lambda m: m.shear((30, 40), 0.2, "vertical"),
    ]
    for operation in operations:
        moved = operation(both)
        assert isinstance(moved, BitmapMasksWithUncertainty)
        np.testing.assert_array_equal(moved.masks, operation(BitmapMasks(masks, 30, 40)).masks)
        np.testing.assert_array_equal(moved.uncertainty.masks, operation(as_masks).masks)
    padded = both.pad((40, 48), pad_val=0)
    np.testing.assert_array_equal(padded.uncertainty.masks[:, :30, :40], levels)
    assert not padded.uncertainty.masks[:, 30:].any()  # new pixels are certain
    # direct computations: exact 2x nearest resize and a flip
    np.testing.assert_array_equal(both.rescale(2.0).flip("horizontal").uncertainty.masks,
                                  np.repeat(np.repeat(levels, 2, axis=1), 2, axis=2)[:, :, ::-1])
    joined = BitmapMasksWithUncertainty.cat([both, BitmapMasks(masks[:1], 30, 40)])
    assert len(joined) == 4 and not joined.uncertainty.masks[3].any()
    np.testing.assert_allclose(both.certainty(), 1 - levels / 255.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- next round
def _train_config(root, refined, work_dir, pipeline_tail):
    cfg = Config.fromfile(UA_MASK_RCNN)
    small_model(cfg, "mask_rcnn")
    cfg.work_dir = work_dir
    cfg.load_from = None
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                dict(type="LoadUncertainty"), *pipeline_tail, dict(type="PackDetInputs")]
    cfg.train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type="DefaultSampler", shuffle=False),
                                dataset=dict(type="UncertaintyCocoDataset", data_root=root, ann_file=os.path.basename(refined),
                                             data_prefix=dict(img="images/"), metainfo=dict(classes=CLASSES),
                                             filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=pipeline))
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=3, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 0.001
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1000, by_epoch=False)
    cfg.log_level = "WARNING"
    cfg.randomness = SEEDED
    return cfg


def test_next_round_mask_rcnn_trains_with_the_roi_aligned_certainty(refined_round, tmp_path):
    root, refined = refined_round
    cfg = _train_config(root, refined, str(tmp_path / "work"),
                        [dict(type="Resize", scale=(256, 192), keep_ratio=True), dict(type="RandomFlip", prob=1.0)])
    runner = Runner.from_cfg(cfg)
    model = runner.model
    head = model.roi_head.mask_head
    calls = []  # (data samples, sampling results, certainty targets, loss inputs)
    roi_loss, certainty_targets = model.roi_head.loss, head.certainty_targets

    def spy_roi_loss(x, rpn_results_list, batch_data_samples):
        calls.append({"samples": batch_data_samples})
        return roi_loss(x, rpn_results_list, batch_data_samples)

    def spy_certainty(sampling_results, batch_gt_instances, rcnn_train_cfg):
        out = certainty_targets(sampling_results, batch_gt_instances, rcnn_train_cfg)
        calls[-1].update(sampling=sampling_results, certainty=out)
        return out

    model.roi_head.loss, head.certainty_targets = spy_roi_loss, spy_certainty
    head.loss_mask.register_forward_hook(lambda module, args, kwargs, output: calls[-1].update(loss=(args, kwargs, output)),
                                         with_kwargs=True)
    before = copy.deepcopy(head.state_dict())
    runner.train()
    assert len(calls) == 3 and all("certainty" in c and torch.isfinite(c["loss"][2]).all() for c in calls)
    assert any(not torch.equal(a, b) for a, b in zip(before.values(), head.state_dict().values()))  # it trained

    # the loss is SUM's weighted mean over every target pixel
    (preds, targets, labels), kwargs, value = calls[0]["loss"]
    selected = preds[torch.arange(len(preds)), labels]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(selected, targets, reduction="none")
    assert torch.allclose(value, (kwargs["certainty"] * bce).mean()[None], rtol=1e-5)
    assert kwargs["certainty"] is calls[0]["certainty"] and (calls[0]["certainty"] < 0.99).any()

    # one instance, computed directly: sidecar map -> certainty at the image size -> 2x nearest -> flip ->
    # torchvision's RoIAlign (aligned, adaptive sampling) with the RoI's proposal box
    call = calls[0]
    sample, sampling = call["samples"][0], call["sampling"][0]
    assert sample.flip and sample.flip_direction == "horizontal" and tuple(sample.scale_factor) == (2.0, 2.0)
    with open(refined) as f:
        coco = json.load(f)
    dataset = runner.train_dataloader.dataset
    info = next(dataset.get_data_info(i) for i in range(len(dataset)) if dataset.get_data_info(i)["img_path"] == sample.img_path)
    ann_ids = [instance["ann_id"] for instance in info["instances"] if not instance["ignore_flag"]]
    annotations = {a["id"]: a for a in coco["annotations"]}
    maps = MapFile(uncertainty_path(refined))
    height, width = info["height"], info["width"]
    checked = 0
    for row in range(len(sampling.pos_priors)):
        ann_id = ann_ids[int(sampling.pos_assigned_gt_inds[row])]
        mask = segmentation_to_mask(annotations[ann_id]["segmentation"], height, width)
        moved_mask = np.repeat(np.repeat(mask, 2, 0), 2, 1)[:, ::-1]
        # the instance the loss used is this annotation (its mask went through the same steps)
        gt = sample.gt_instances.masks.masks[int(sampling.pos_assigned_gt_inds[row])]
        np.testing.assert_array_equal(gt[: 2 * height, : 2 * width].astype(bool), moved_mask)
        certainty = np.ones((height, width), np.float32)
        if ann_id in maps:
            levels = maps.levels(ann_id)
            x1, y1, x2, y2 = levels.box
            certainty[y1:y2 + 1, x1:x2 + 1] = certainty_from_levels(levels.values)
        moved = np.ascontiguousarray(np.repeat(np.repeat(certainty, 2, 0), 2, 1)[:, ::-1])
        box = sampling.pos_priors[row].detach().clone()
        box[[0, 2]] = box[[0, 2]].clamp(0, 2 * width)
        box[[1, 3]] = box[[1, 3]].clamp(0, 2 * height)
        # RoIAlign of c = 1 - RoIAlign of u (outside the image both count 0: u = 0 there)
        aligned = torchvision.ops.roi_align(torch.from_numpy(1 - moved)[None, None], [box[None]], 28, 1.0, 0, True)[0, 0]
        torch.testing.assert_close(call["certainty"][row], 1 - aligned, atol=2e-5, rtol=0)
        checked += ann_id in maps
    assert checked > 0


def test_sidecars_that_do_not_fit_are_named(refined_round, tmp_path):
    root, refined = refined_round

    def build(ann_file, **kwargs):
        return DATASETS.build(dict(type="UncertaintyCocoDataset", data_root=root, ann_file=ann_file, data_prefix=dict(img="images/"),
                                   metainfo=dict(classes=CLASSES), pipeline=[], **kwargs))

    # another annotation file's sidecar: its ids are not this file's
    write_other_annotation_file(refined, os.path.join(root, "other.json"))
    with pytest.raises(MapFileError, match=r"pseudo_refined.uncertainty.bin \(for .*other.json\).*another annotation file"):
        build("other.json", uncertainty_file="pseudo_refined.uncertainty.bin")
    # a sidecar whose maps are for another image size
    resized = str(tmp_path / "resized.bin")
    key, (height, width) = write_resized_sidecar(refined, resized)
    with pytest.raises(MapFileError, match=rf"annotation id {key} .*map is for a {height}x{width} image"):
        build(os.path.basename(refined), uncertainty_file=resized)
    # no sidecar where the config asks for one
    with pytest.raises(FileNotFoundError, match=r"uncertainty sidecar .*missing.bin of .*pseudo_refined.json does not exist"):
        build(os.path.basename(refined), uncertainty_file="missing.bin")
    # a dataset without sidecars under LoadUncertainty
    plain = DATASETS.build(dict(type="CocoDataset", data_root=root, ann_file=os.path.basename(refined), data_prefix=dict(img="images/"),
                                metainfo=dict(classes=CLASSES),
                                pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                                          dict(type="LoadUncertainty")]))
    with pytest.raises(KeyError, match="names no uncertainty_file; use UncertaintyCocoDataset"):
        plain[0]
    relaxed = TRANSFORMS.build(dict(type="LoadUncertainty", required=False))
    sample = relaxed({"gt_masks": BitmapMasks(np.ones((1, 4, 5), np.uint8), 4, 5), "instances": [{}]})
    assert not sample["gt_masks"].uncertainty.masks.any()


# ---------------------------------------------------------------------------------------------- Mask2Former
def _mask2former_heads():
    cfg = Config.fromfile(UA_MASK2FORMER)
    small_model(cfg, "mask2former")
    ours_cfg = cfg.model.panoptic_head
    stock_cfg = copy.deepcopy(ours_cfg)
    stock_cfg["type"] = "Mask2FormerHead"  # (item assignment: ConfigDict.update would merge the loss dicts)
    stock_cfg["loss_mask"] = dict(type="CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0)
    stock_cfg["loss_dice"] = dict(type="DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True, eps=1.0,
                                  loss_weight=5.0)
    for head_cfg in (ours_cfg, stock_cfg):
        head_cfg.update(train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    return MODELS.build(ours_cfg), MODELS.build(stock_cfg)


def _mask2former_inputs(levels_of):
    g = torch.Generator().manual_seed(1)
    queries, classes = 100, len(CLASSES)
    cls_scores = torch.randn(2, queries, classes + 1, generator=g)
    mask_preds = torch.randn(2, queries, 24, 32, generator=g)
    batch = []
    for image in range(2):
        masks = np.zeros((2, 96, 128), np.uint8)
        masks[0, 10 + image:50, 20:90] = 1
        masks[1, 40:90, 60 + image:120] = 1
        batch.append(InstanceData(labels=torch.tensor([0, 1]), masks=BitmapMasksWithUncertainty(masks, 96, 128, levels_of(image))))
    metas = [dict(img_shape=(96, 128), pad_shape=(96, 128), batch_input_shape=(96, 128))] * 2
    return cls_scores, mask_preds, batch, metas


def test_mask2former_head_with_certainty_one_is_the_stock_head_and_samples_certainty_at_the_loss_points(monkeypatch):
    from refine_hooks.mmdet.uncertainty import heads

    ours, stock = _mask2former_heads()
    cls_scores, mask_preds, batch, metas = _mask2former_inputs(lambda image: np.zeros((2, 96, 128), np.uint8))
    plain_batch = [InstanceData(labels=b.labels, masks=BitmapMasks(b.masks.masks, 96, 128)) for b in batch]
    torch.manual_seed(0)
    expected = stock._loss_by_feat_single(cls_scores, mask_preds, stock.preprocess_gt(plain_batch, [None, None]), metas)
    torch.manual_seed(0)
    got = ours._loss_by_feat_single(cls_scores, mask_preds, ours.preprocess_gt(batch, [None, None]), metas)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)

    # every instance uncertain on the left half of the image: the certainty at the sampled points is
    # point_sample of its map at the loss's own points
    left = np.zeros((2, 96, 128), np.uint8)
    left[:, :, :64] = 255
    cls_scores, mask_preds, batch, metas = _mask2former_inputs(lambda image: left)
    seen = {}
    sample_points, point_certainty = heads.get_uncertain_point_coords_with_randomness, heads.UncertaintyAwareMask2FormerHead._point_certainty

    def spy_points(*args):
        seen["points"] = sample_points(*args)
        return seen["points"]

    def spy_certainty(*args):
        seen["certainty"] = point_certainty(*args)
        return seen["certainty"]

    monkeypatch.setattr(heads, "get_uncertain_point_coords_with_randomness", spy_points)
    monkeypatch.setattr(heads.UncertaintyAwareMask2FormerHead, "_point_certainty", staticmethod(spy_certainty))
    torch.manual_seed(0)
    losses = ours._loss_by_feat_single(cls_scores, mask_preds, ours.preprocess_gt(batch, [None, None]), metas)
    x = seen["points"][..., 0]
    # (bilinear sampling of u; the map continues beyond the image for points within half a pixel of it)
    expected_c = 1 - torch.nn.functional.grid_sample(torch.from_numpy(left[:1, None].astype(np.float32) / 255).expand(len(x), 1, 96, 128),
                                                     (2 * seen["points"] - 1)[:, :, None], align_corners=False,
                                                     padding_mode="border")[:, 0, :, 0]
    torch.testing.assert_close(seen["certainty"], expected_c, atol=1e-5, rtol=0)  # (c rounded to 1/65536)
    y = seen["points"][..., 1]
    inside = (x > 0.01) & (x < 0.99) & (y > 0.01) & (y < 0.99)  # away from the image's border
    assert (seen["certainty"][inside & (x < 0.49)] == 0).all() and (seen["certainty"][inside & (x > 0.51)] == 1).all()

    # all uncertain: the mask losses are 0
    cls_scores, mask_preds, batch, metas = _mask2former_inputs(lambda image: np.full((2, 96, 128), 255, np.uint8))
    torch.manual_seed(0)
    loss_cls, loss_mask, loss_dice = ours._loss_by_feat_single(cls_scores, mask_preds, ours.preprocess_gt(batch, [None, None]), metas)
    assert loss_mask == 0 and loss_dice == 0


def test_uncertainty_configs_inherit_the_stock_configs():
    mask_rcnn = Config.fromfile(UA_MASK_RCNN)
    assert mask_rcnn.model.roi_head.mask_head.type == "UncertaintyAwareFCNMaskHead"
    assert mask_rcnn.model.roi_head.mask_head.num_convs == 4  # the rest is mmdet's
    assert [step["type"] for step in mask_rcnn.train_pipeline][:3] == ["LoadImageFromFile", "LoadAnnotations", "LoadUncertainty"]
    mask2former = Config.fromfile(UA_MASK2FORMER)
    assert mask2former.model.panoptic_head.type == "UncertaintyAwareMask2FormerHead"
    assert mask2former.model.panoptic_head.loss_dice.theta == 0.6
    assert mask2former.train_dataloader.dataset.type == "UncertaintyCocoDataset"
    small_model(mask2former, "mask2former")
    MODELS.build(mask2former.model)  # the whole detector builds


# ---------------------------------------------------------------------------------------------- the hook
def test_pseudo_label_hook_keeps_mask_rcnn_probabilities_for_the_sidecar(coco, unlabeled, tmp_path):
    root, ann = coco
    unl_root, unl_info = unlabeled
    cfg = runner_config("mask-rcnn_r50_fpn_1x_coco_refined.py", "mask_rcnn", root, ann, str(tmp_path / "work"))
    cfg.custom_hooks = []
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    hooks = {}
    for uncertainty in (False, True):
        hook = refine_hooks.mmdet.PseudoLabelRefineHook(unlabeled_dataloader=dataloader(unl_root, unl_info),
                                                        out_dir=str(tmp_path / f"u{int(uncertainty)}"), refiner=TINY_REFINER,
                                                        score_thr=0.0, uncertainty=uncertainty)
        hooks[uncertainty] = hook.make_round(runner, "final")
    plain_dir, dir_ = os.path.dirname(hooks[False]), os.path.dirname(hooks[True])
    with open(os.path.join(plain_dir, "pseudo_coarse.json")) as f, open(os.path.join(dir_, "pseudo_coarse.json")) as g:
        assert f.read() == g.read()  # keeping the probabilities changes no coarse mask
    with open(hooks[False]) as f, open(hooks[True]) as g:
        plain, refined = json.load(f), json.load(g)
    assert [a["segmentation"] for a in plain["annotations"]] == [a["segmentation"] for a in refined["annotations"]]
    assert not os.path.exists(os.path.join(plain_dir, "pseudo_coarse.probabilities.bin"))
    assert not os.path.exists(uncertainty_path(hooks[False]))

    probabilities = MapFile(os.path.join(dir_, "pseudo_coarse.probabilities.bin"), kind="coarse_probability")
    with open(os.path.join(dir_, "pseudo_coarse.json")) as f:
        coarse = json.load(f)
    sizes = {i["id"]: (i["height"], i["width"]) for i in coarse["images"]}
    assert sorted(probabilities.keys().tolist()) == sorted(a["id"] for a in coarse["annotations"]) and len(probabilities) > 0
    for annotation in coarse["annotations"]:
        mask = segmentation_to_mask(annotation["segmentation"], *sizes[annotation["image_id"]])
        levels = probabilities.levels(annotation["id"])
        full = levels.full(*mask.shape)
        # mmdet's soft masks are floor(255 p) and its masks p >= 0.5: levels >= 128 inside, <= 127 outside
        assert (full[~mask] <= 127).all() and (full[mask] >= 127).all()
    sidecar = MapFile(uncertainty_path(hooks[True]))
    assert sidecar.header["uncertainty"]["coarse"]["source"] == "detector_probabilities"
    refined_ids = [a["id"] for a in refined["annotations"] if a["refinement"]["status"] == "refined"]
    assert sorted(sidecar.keys().tolist()) == sorted(refined_ids)
    assert isinstance(levels, WindowedMap)


def test_mask2former_probabilities_are_its_masks_logits(coco, tmp_path):
    from refine_hooks.mmdet.uncertainty import keeping_mask_probabilities

    root, ann = coco
    cfg = runner_config("mask2former_r50_8xb2-lsj-50e_coco_refined.py", "mask2former", root, ann, str(tmp_path / "work"))
    cfg.custom_hooks = []
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    batch = next(iter(runner.test_dataloader))
    with torch.no_grad(), keeping_mask_probabilities(runner.model) as kept:
        outputs = runner.model.test_step(batch)
        levels = kept.for_samples(outputs)
    assert "instance_postprocess" not in runner.model.panoptic_fusion_head.__dict__  # the instance is restored
    for sample, probability in zip(outputs, levels):
        masks = sample.pred_instances.masks.cpu().numpy()
        assert probability.dtype == np.uint8 and probability.shape == masks.shape and len(masks) > 0
        # round(255 σ(logit)) >= 128 exactly where the logit is positive, i.e. where the head's mask is
        np.testing.assert_array_equal(probability >= 128, masks)


def test_mask2former_probability_levels_agree_with_the_logits_sign_at_one_half():
    from refine_hooks.mmdet.uncertainty.probabilities import _probability_levels

    # float32 σ of each of these is 0.5 or within rounding of it: round(127.5) alone would say 128 for all
    logits = torch.tensor([[[0.0, -0.0, -1e-8, -5e-8, 1e-8, 5e-8, -20.0, 20.0, -0.01, 0.01]]])
    levels = _probability_levels(logits)
    assert levels.dtype == np.uint8 and levels.shape == (1, 1, 10)
    np.testing.assert_array_equal(levels >= 128, (logits > 0).numpy())
    np.testing.assert_array_equal(levels[0, 0], [127, 127, 127, 127, 128, 128, 0, 255, 127, 128])
