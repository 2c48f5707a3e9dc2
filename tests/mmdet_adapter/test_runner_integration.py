"""Real mmengine Runners with real mmdet detectors (stock configs, random weights, small images) on CPU."""

import json
import os
import pickle

import numpy as np
import pytest

from frameworks import import_framework

import_framework("mmdet")  # skips this module without mmdet, fails it when REFINE_HOOKS_REQUIRE names mmdet

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from refine_hooks.mmdet import MaskRefinementHook, PseudoLabelRefineHook, RefinedDetector  # noqa: E402
from refine_hooks.jobs.worker import INFO_KEY, STATUS_REFINED  # noqa: E402

from mmdet_test_utils import CLASSES, TINY_REFINER, dataloader, run_evaluate_tool, runner_config  # noqa: E402

MASK_RCNN = "mask-rcnn_r50_fpn_1x_coco_refined.py"
SOLOV2 = "solov2_r50_fpn_1x_coco_refined.py"
COCO_KEYS = {"mAP": "AP", "mAP_50": "AP50", "mAP_75": "AP75", "mAP_s": "APs", "mAP_m": "APm", "mAP_l": "APl"}


def hook_config(**kwargs):
    return dict(type="MaskRefinementHook", refiner=TINY_REFINER, **kwargs)


def build_runner(cfg):
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()  # random weights with the heads' prior biases, as training would start
    return runner


def the_hook(runner, kind):
    hooks = [h for h in runner.hooks if isinstance(h, kind)]
    assert len(hooks) == 1
    return hooks[0]


def load_dump(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def decode(rles):
    return np.stack([mask_utils.decode(r).astype(bool) for r in rles]) if rles else np.zeros((0, 0, 0), bool)


def test_mask_rcnn_test_refines_what_the_metrics_see(coco, tmp_path):
    root, ann = coco
    dump = str(tmp_path / "preds.pkl")
    cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "work"),
                        hook=hook_config(keep_unrefined=True), dump=dump)
    runner = build_runner(cfg)
    metrics = runner.test()

    hook = the_hook(runner, MaskRefinementHook)
    assert hook.stats.refined > 0
    assert hook.stats.image_sources == {"img_path": 3, "inputs": 0}
    assert "test_step" not in runner.model.__dict__  # the wrapper is gone after the test

    # The dump is what the evaluator received: refined masks, with the detector's masks kept beside them.
    samples = load_dump(dump)
    assert len(samples) == 3
    changed = 0
    for sample in samples:
        pred = sample["pred_instances"]
        refined = decode(pred["masks"])
        unrefined = pred["unrefined_masks"].numpy()
        flags = pred["refined"].numpy()
        assert refined.shape == unrefined.shape and refined.shape[1:] == tuple(sample["ori_shape"])
        assert np.array_equal(refined[~flags], unrefined[~flags])
        changed += int(sum(not np.array_equal(a, b) for a, b in zip(refined[flags], unrefined[flags])))
        assert np.isnan(pred["refine_iou"].numpy()[~flags]).all()
        assert not np.isnan(pred["refine_iou"].numpy()[flags]).any()
        assert sample["refine_image_source"] == "img_path"
    assert changed > 0

    # Validation goes through the same wrapper (val_step), and restores it too.
    val_metrics = runner.val()
    assert hook.stats.refined > 0 and hook.stats.images == 3 and "val_step" not in runner.model.__dict__
    assert "coco/boundary_mAP" in val_metrics

    # Metric keys as mmdet names them, and the same numbers tools/evaluate.py gives on the same predictions.
    tool = run_evaluate_tool(ann, dump, str(tmp_path / "eval.json"))
    for iou_type in ("segm", "boundary"):
        for ours, theirs in COCO_KEYS.items():
            assert metrics[f"coco/{iou_type}_{ours}"] == pytest.approx(tool[f"{iou_type}/{theirs}"], abs=1e-12)


def test_zero_detections_do_not_crash(coco, tmp_path):
    root, ann = coco
    dump = str(tmp_path / "preds.pkl")
    cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "work"), hook=hook_config(), dump=dump)
    cfg.model.test_cfg.rcnn.score_thr = 1.01  # nothing passes
    runner = build_runner(cfg)
    metrics = runner.test()
    hook = the_hook(runner, MaskRefinementHook)
    assert hook.stats.detections == 0 and hook.stats.refined == 0 and hook.stats.images == 3
    assert all(len(s["pred_instances"]["scores"]) == 0 for s in load_dump(dump))
    assert "coco/segm_mAP" in metrics and "coco/boundary_mAP" in metrics


def test_solov2_masks_without_boxes(coco, tmp_path):
    from mmdet.structures.mask import mask2bbox

    root, ann = coco
    dump = str(tmp_path / "preds.pkl")
    cfg = runner_config(SOLOV2, "solov2", root, ann, str(tmp_path / "work"),
                        hook=hook_config(keep_unrefined=True, score_thr=0.0), dump=dump)
    runner = build_runner(cfg)
    metrics = runner.test()
    hook = the_hook(runner, MaskRefinementHook)
    assert hook.stats.detections > 0 and hook.stats.refined > 0
    for sample in load_dump(dump):
        pred = sample["pred_instances"]
        masks = torch.from_numpy(decode(pred["masks"]))
        # SOLOv2 gives zero boxes; every box is now its (refined) mask's box, as mmdet's mask2bbox computes it.
        assert torch.equal(pred["bboxes"], mask2bbox(masks))
        assert pred["scores"].shape == pred["labels"].shape == pred["refined"].shape
    assert metrics["coco/segm_mAP"] >= 0 and "coco/boundary_mAP_50" in metrics


def test_refined_detector_loads_a_plain_detector_checkpoint(coco, tmp_path):
    from mmengine.runner import save_checkpoint
    from mmdet.registry import MODELS

    root, ann = coco
    plain_cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "plain"))
    torch.manual_seed(1)
    plain = MODELS.build(plain_cfg.model)
    plain.init_weights()
    plain.eval()
    checkpoint = str(tmp_path / "plain.pth")
    # numpy objects in meta, as mmengine writes them: torch >= 2.6's weights_only loading refuses these.
    save_checkpoint({"state_dict": plain.state_dict(),
                     "meta": {"seed": np.int64(1), "dataset_meta": {"classes": CLASSES}, "hist": np.arange(3)}},
                    checkpoint)

    cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "refined"), dump=str(tmp_path / "p.pkl"))
    cfg.custom_hooks = []
    cfg.model = dict(type="RefinedDetector", detector=plain_cfg.model, refiner=TINY_REFINER, keep_unrefined=True)
    cfg.load_from = checkpoint
    runner = Runner.from_cfg(cfg)
    runner.test()  # loads the checkpoint, refines in predict

    model = runner.model
    assert isinstance(model, RefinedDetector)
    assert model.data_preprocessor is model.detector.data_preprocessor
    loaded = model.detector.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert model.stats.refined > 0

    # Same inputs, same detections: refinement changes masks (and derived boxes) only.
    batch = next(iter(runner.test_dataloader))
    with torch.no_grad():
        ours = model.test_step(batch)
        theirs = plain.test_step(batch)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.pred_instances.scores, b.pred_instances.scores)
        assert torch.equal(a.pred_instances.labels, b.pred_instances.labels)
        assert torch.equal(a.pred_instances.bboxes, b.pred_instances.bboxes)  # box-head boxes are kept
        assert torch.equal(a.pred_instances.unrefined_masks, b.pred_instances.masks)


def test_pseudo_label_hook_writes_next_round(coco, unlabeled, tmp_path):
    root, ann = coco
    unl_root, unl_info = unlabeled
    cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "work"))
    cfg.train_dataloader = dataloader(root, ann, train=True, batch_size=1)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 0.001
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1000, by_epoch=False)
    cfg.custom_hooks = [dict(type="PseudoLabelRefineHook", unlabeled_dataloader=dataloader(unl_root, unl_info),
                             out_dir="pseudo", refiner=TINY_REFINER, score_thr=0.0)]
    runner = Runner.from_cfg(cfg)
    runner.train()

    hook = the_hook(runner, PseudoLabelRefineHook)
    path = hook.last_output
    assert path == os.path.join(str(tmp_path / "work"), "pseudo", "final", "pseudo_refined.json")
    with open(unl_info) as f:
        info = json.load(f)
    with open(os.path.join(os.path.dirname(path), "pseudo_coarse.json")) as f:
        coarse = json.load(f)
    from pycocotools.coco import COCO

    refined = COCO(path)  # a valid COCO annotation file
    assert refined.dataset["images"] == info["images"]
    assert refined.dataset["categories"] == info["categories"]
    annotations = refined.dataset["annotations"]
    assert len(annotations) == len(coarse["annotations"]) > 0
    assert len({a["id"] for a in annotations}) == len(annotations)
    sizes = {img["id"]: (img["height"], img["width"]) for img in info["images"]}
    statuses = set()
    for a in annotations:
        assert a["category_id"] in {3, 7} and a["image_id"] in sizes and a["iscrowd"] == 0
        mask = refined.annToMask(a).astype(bool)
        assert mask.shape == sizes[a["image_id"]]
        assert a["area"] == pytest.approx(float(mask.sum()))
        statuses.add(a[INFO_KEY]["status"])
    assert STATUS_REFINED in statuses
    with open(os.path.join(os.path.dirname(path), "next_round.txt")) as f:
        command = f.read()
    assert os.path.abspath(path) in command and "train_dataloader.dataset.ann_file=" in command


def test_mask2former_full_model(coco, tmp_path):
    from mmdet.structures.mask import mask2bbox

    root, ann = coco
    dump = str(tmp_path / "preds.pkl")
    cfg = runner_config("mask2former_r50_8xb2-lsj-50e_coco_refined.py", "mask2former", root, ann,
                        str(tmp_path / "work"), hook=hook_config(keep_unrefined=True), dump=dump)
    runner = build_runner(cfg)
    metrics = runner.test()
    hook = the_hook(runner, MaskRefinementHook)
    assert hook.stats.refined > 0
    for sample in load_dump(dump):
        pred = sample["pred_instances"]
        masks = torch.from_numpy(decode(pred["masks"]))
        flags = pred["refined"]
        # Mask2Former's boxes are its masks' boxes: they follow the refined masks.
        assert torch.equal(pred["bboxes"][flags], mask2bbox(masks[flags]))
    assert "coco/boundary_mAP" in metrics


def test_pseudo_label_rounds_every_epoch_retarget_the_train_dataloader(coco, unlabeled, tmp_path):
    root, ann = coco
    unl_root, unl_info = unlabeled
    cfg = runner_config(MASK_RCNN, "mask_rcnn", root, ann, str(tmp_path / "work"))
    cfg.train_dataloader = dataloader(root, ann, train=True, batch_size=2)
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=1000)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 0.001
    cfg.custom_hooks = [dict(type="PseudoLabelRefineHook", unlabeled_dataloader=dataloader(unl_root, unl_info),
                             out_dir=str(tmp_path / "pseudo"), refiner=TINY_REFINER, score_thr=0.0, interval=1)]
    runner = Runner.from_cfg(cfg)
    runner.train()

    first = str(tmp_path / "pseudo" / "epoch_1" / "pseudo_refined.json")
    assert os.path.isfile(first)
    # The second epoch trained on the first round's pseudo labels, on the unlabeled images.
    dataset = runner.train_loop.dataloader.dataset
    assert dataset.ann_file == first
    names = {os.path.basename(dataset.get_data_info(i)["img_path"]) for i in range(len(dataset))}
    assert names and names <= {"unl_0.png", "unl_1.png"}
    assert runner.train_loop.max_iters == 2 + len(runner.train_loop.dataloader)  # epoch 1 on 3 images, batch 2
    assert the_hook(runner, PseudoLabelRefineHook).last_output == str(tmp_path / "pseudo" / "final" / "pseudo_refined.json")
