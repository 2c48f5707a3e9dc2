"""Detector output formats at the adapter boundary, image reconstruction, configs and the checkpoint fix."""

import importlib.util
import os

import numpy as np
import pytest

from frameworks import import_framework

import_framework("mmdet")  # skips this module without mmdet, fails it when REFINE_HOOKS_REQUIRE names mmdet

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from mmdet.registry import DATASETS, HOOKS, MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.mask import mask2bbox  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import refine_hooks.mmdet  # noqa: E402,F401
from refine_hooks.data.images import load_image  # noqa: E402
from refine_hooks.mmdet.predictions import RefineStats, refine_data_samples  # noqa: E402
from refine_hooks.mmdet.refiner_setup import build_on_device, image_getter  # noqa: E402
from refine_hooks.refiners import build_refiner  # noqa: E402

from mmdet_test_utils import CLASSES, CONFIGS, TINY_REFINER, make_tiny_coco, pipeline  # noqa: E402

MASK2FORMER = "mask2former_r50_8xb2-lsj-50e_coco_refined.py"
register_all_modules(init_default_scope=True)  # building mmdet modules outside a Runner


@pytest.fixture(scope="module")
def refiner():
    return build_refiner(dict(TINY_REFINER, device="cpu"))


def mask2former_instances(height, width, seed=0):
    """What Mask2Former's real fusion head (stock config, 2 classes) makes of structured query logits."""
    cfg = Config.fromfile(os.path.join(CONFIGS, MASK2FORMER))
    head = MODELS.build(dict(cfg.model.panoptic_fusion_head, num_things_classes=2, num_stuff_classes=0,
                             test_cfg=dict(cfg.model.test_cfg, max_per_image=6)))
    g = torch.Generator().manual_seed(seed)
    queries = 5
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    logits = []
    for q in range(queries):
        cy, cx = torch.randint(10, height - 10, (1,), generator=g), torch.randint(10, width - 10, (1,), generator=g)
        r = 6 + 3 * q
        logits.append(3.0 - 6.0 * (((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt() > r).float())
    mask_pred = torch.stack(logits)
    mask_cls = torch.randn(queries, 3, generator=g)
    return head.instance_postprocess(mask_cls, mask_pred)


def sample_for(image_path, instances):
    h, w = load_image(image_path).shape[:2]
    sample = DetDataSample(metainfo=dict(img_path=image_path, ori_shape=(h, w), img_shape=(h, w), img_id=0))
    sample.pred_instances = instances
    return sample


@pytest.mark.parametrize("variant", ["mmdet-3.3", "float-zero-boxes"])
def test_mask2former_output_goes_through_the_same_path(variant, coco, refiner):
    root, _ = coco
    image_path = os.path.join(root, "images", "img_0.png")
    h, w = load_image(image_path).shape[:2]
    instances = mask2former_instances(h, w)
    if variant == "float-zero-boxes":  # the format other Mask2Former versions return
        instances.masks = instances.masks.float()
        instances.bboxes = torch.zeros_like(instances.bboxes)
    else:
        assert instances.masks.dtype == torch.bool
        assert torch.equal(instances.bboxes, mask2bbox(instances.masks))
    before = instances.clone()
    sample = sample_for(image_path, instances)
    stats = RefineStats()
    refine_data_samples(refiner, [sample], image_getter([sample], None, image_source="auto", bgr=True, stats=stats),
                        keep_unrefined=True, stats=stats)
    out = sample.pred_instances
    assert stats.refined > 0 and stats.image_sources["img_path"] == 1
    assert out.masks.dtype == before.masks.dtype and out.masks.shape == before.masks.shape
    assert torch.equal(out.scores, before.scores) and torch.equal(out.labels, before.labels)
    assert torch.equal(out.unrefined_masks, before.masks)
    refined_bool = out.masks > 0.5 if out.masks.is_floating_point() else out.masks
    if out.masks.is_floating_point():
        assert set(torch.unique(out.masks).tolist()) <= {0.0, 1.0}
    flags = out.refined
    assert flags.any()
    # Boxes made from masks (or empty) follow the refined masks, exactly as mmdet's mask2bbox computes them.
    assert torch.equal(out.bboxes[flags], mask2bbox(refined_bool[flags]))
    assert torch.equal(out.masks[~flags], before.masks[~flags])


def test_score_threshold_refines_only_confident_detections(coco, refiner):
    root, _ = coco
    image_path = os.path.join(root, "images", "img_1.png")
    h, w = load_image(image_path).shape[:2]
    instances = mask2former_instances(h, w, seed=3)
    threshold = float(instances.scores.median())
    before = instances.clone()
    sample = sample_for(image_path, instances)
    stats = refine_data_samples(refiner, [sample], image_getter([sample], None, image_source="auto", bgr=True,
                                                                 stats=RefineStats()), score_thr=threshold)
    low = before.scores < threshold
    assert stats.below_score == int(low.sum()) > 0
    assert not sample.pred_instances.refined[low].any()
    assert torch.equal(sample.pred_instances.masks[low], before.masks[low])


def test_images_rebuilt_from_batch_inputs_match_the_file(coco):
    """Raw (pipeline) and preprocessed (normalised, RGB, padded) inputs both give back the image."""
    from mmengine.dataset import pseudo_collate

    root, ann = coco
    dataset = DATASETS.build(dict(type="CocoDataset", data_root=root, ann_file=os.path.basename(ann),
                                  data_prefix=dict(img="images/"), metainfo=dict(classes=CLASSES), test_mode=True,
                                  pipeline=pipeline(scale=(320, 240))))
    preprocessor = MODELS.build(dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53],
                                     std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32))
    batch = pseudo_collate([dataset[0], dataset[1]])
    processed = preprocessor(batch, False)
    samples = processed["data_samples"]
    for i, sample in enumerate(samples):
        truth = load_image(sample.img_path).astype(np.int16)
        size = truth.shape[:2]
        for inputs, bgr, mean, std in (
            (batch["inputs"], True, None, None),
            (processed["inputs"], False, preprocessor.mean, preprocessor.std),
        ):
            stats = RefineStats()
            get = image_getter(samples, inputs, image_source="inputs", bgr=bgr, stats=stats, mean=mean, std=std)
            image, source = get(i, size)
            assert source == "inputs" and image.dtype == np.uint8 and image.shape == truth.shape
            # Resized down and up again: close, not equal; a channel swap or a wrong scale is far off.
            assert np.abs(image.astype(np.int16) - truth).mean() < 12
            assert np.abs(image[:, :, ::-1].astype(np.int16) - truth).mean() > 3 * np.abs(image.astype(np.int16) - truth).mean()


def test_img_path_mismatch_falls_back_to_inputs_and_says_why(tmp_path):
    root = str(tmp_path)
    make_tiny_coco(root, num_images=1, size=(64, 80))
    path = os.path.join(root, "images", "img_0.png")
    sample = DetDataSample(metainfo=dict(img_path=path, ori_shape=(50, 80), img_shape=(50, 80)))
    stats = RefineStats()
    inputs = [torch.zeros(3, 50, 80, dtype=torch.uint8)]
    image, source = image_getter([sample], inputs, image_source="auto", bgr=True, stats=stats)(0, (50, 80))
    assert source == "inputs" and image.shape == (50, 80, 3)
    assert "64x80" in stats.fallback_reasons[0] and "50x80" in stats.fallback_reasons[0]
    with pytest.raises(ValueError, match="img_path"):
        image_getter([sample], inputs, image_source="img_path", bgr=True, stats=stats)(0, (50, 80))


def test_refiner_runs_on_the_detector_device_whatever_the_config_says():
    refiner = build_on_device(dict(TINY_REFINER, device="cuda:3"), torch.device("cpu"), "test")
    assert next(refiner.engine.model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("name,model_type", [
    ("mask-rcnn_r50_fpn_1x_coco_refined.py", "MaskRCNN"),
    ("mask2former_r50_8xb2-lsj-50e_coco_refined.py", "Mask2Former"),
    ("solov2_r50_fpn_1x_coco_refined.py", "SOLOv2"),
])
def test_configs_inherit_stock_configs_and_add_the_hook(name, model_type):
    cfg = Config.fromfile(os.path.join(CONFIGS, name))
    assert cfg.model.type == model_type
    assert cfg.custom_imports.imports == ["refine_hooks.mmdet"]
    (hook_cfg,) = cfg.custom_hooks
    hook = HOOKS.build(hook_cfg)
    assert type(hook).__name__ == "MaskRefinementHook" and hook.refiner is None  # built lazily, on the device
    assert hook.refiner_spec["model_type"] == "vit_h"


def test_refined_detector_config_wraps_the_stock_model():
    cfg = Config.fromfile(os.path.join(CONFIGS, "mask-rcnn_r50_fpn_1x_coco_refined-detector.py"))
    assert cfg.model.type == "RefinedDetector" and cfg.model.detector.type == "MaskRCNN"
    assert cfg.model.detector.data_preprocessor.type == "DetDataPreprocessor"
    assert "data_preprocessor" not in cfg.model or cfg.model.data_preprocessor is None


def test_lvis_configs():
    for name, metric in (("lvis/mask-rcnn_r50_fpn_sample1e-3_ms-1x_lvis-v1_refined.py", "LVISBoundaryMetric"),
                         ("lvis/mask-rcnn_r50_fpn_1x_coco_refined_cocofied-lvis-v1.py", "LVISBoundaryMetric")):
        cfg = Config.fromfile(os.path.join(CONFIGS, name))
        assert cfg.test_evaluator.type == metric
        assert cfg.custom_hooks[0].type == "MaskRefinementHook"
        assert cfg.test_evaluator.ann_file.endswith(".json")


def test_mmengine_reads_checkpoints_with_numpy_meta(tmp_path):
    from mmengine.runner import CheckpointLoader

    path = str(tmp_path / "ckpt.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"seed": np.int64(3), "a": np.arange(2)}}, path)
    with pytest.raises(Exception):
        torch.load(path)  # torch >= 2.6: weights_only=True refuses numpy objects
    loaded = CheckpointLoader.load_checkpoint(path, map_location="cpu")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2)) and loaded["meta"]["seed"] == 3


def test_package_lookup_without_pkg_resources_agrees_with_mmengine():
    from mmengine.utils import package_utils

    from refine_hooks.mmdet import compat

    if importlib.util.find_spec("pkg_resources") is not None:  # compare with mmengine's own answers
        assert compat.get_installed_path("mmdet") == package_utils.get_installed_path("mmdet")
        assert compat.get_installed_path("mmengine") == package_utils.get_installed_path("mmengine")
    import mmdet

    assert compat.get_installed_path("mmdet") == os.path.dirname(mmdet.__file__)
    assert compat.is_installed("mmdet") and not compat.is_installed("no_such_package_refine_hooks")


def test_wrapper_config_adds_updates_and_removes_refinement(tmp_path):
    from refine_hooks.mmdet.testing import build_test_config

    cfg = build_test_config("mmdet::solov2/solov2_r50_fpn_1x_coco.py", "ckpt.pth", work_dir=str(tmp_path),
                            refiner=dict(model_type="vit_b", checkpoint="sam_b.pth"), hook_options=dict(score_thr=0.3))
    (hook,) = [h for h in cfg.custom_hooks if h.type == "MaskRefinementHook"]
    assert hook.refiner == dict(type="SAMRefiner", model_type="vit_b", checkpoint="sam_b.pth") and hook.score_thr == 0.3
    assert cfg.load_from == "ckpt.pth" and "refine_hooks.mmdet" in cfg.custom_imports.imports

    ours = os.path.join(CONFIGS, "mask-rcnn_r50_fpn_1x_coco_refined.py")
    assert len(build_test_config(ours, refiner=dict(checkpoint="x.pth")).custom_hooks) == 1
    assert build_test_config(ours, refine=False).custom_hooks == []
    explicit = os.path.join(CONFIGS, "mask-rcnn_r50_fpn_1x_coco_refined-detector.py")
    assert build_test_config(explicit, refine=False).model.type == "MaskRCNN"
    assert build_test_config(explicit, refiner=dict(checkpoint="x.pth")).model.refiner.checkpoint == "x.pth"
    with pytest.raises(FileNotFoundError):
        build_test_config("mmdet::no/such_config.py")


def test_wrapper_command_line_parses(capsys, monkeypatch):
    import runpy

    monkeypatch.setattr("sys.argv", ["mmdet_test.py"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(os.path.dirname(CONFIGS), "..", "tools", "mmdet_test.py"), run_name="__main__")
    assert exit_info.value.code == 2  # config and checkpoint are required
    assert "the following arguments are required: config, checkpoint" in capsys.readouterr().err
